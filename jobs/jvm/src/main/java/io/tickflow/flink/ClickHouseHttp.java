package io.tickflow.flink;

import java.io.IOException;
import java.net.URI;
import java.net.URLEncoder;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.Base64;

/** RowBinary inserts over ClickHouse's HTTP interface (the twin of the Python RowBinaryWriter). */
class ClickHouseHttp {

    /** What an insert sends: the query and its body. */
    interface Transport {
        /** Status and body of the answer. */
        Response post(URI uri, byte[] body) throws IOException, InterruptedException;
    }

    record Response(int status, String body) {}

    private final String baseUrl;
    private final Transport transport;

    ClickHouseHttp(String baseUrl, String user, String password) {
        this(baseUrl, httpTransport(user, password));
    }

    ClickHouseHttp(String baseUrl, Transport transport) {
        this.baseUrl = baseUrl;
        this.transport = transport;
    }

    /**
     * Inserts {@code rows} rows of RowBinary {@code data}; throws with ClickHouse's message if
     * refused. An I/O error is retried once: ClickHouse closes idle keep-alive connections (after
     * 3 s on 18.16) and the rows are idempotent, so a repeat is harmless.
     */
    void insert(String database, String table, String columns, byte[] data, int length, long rows)
            throws IOException, InterruptedException {
        String query = "INSERT INTO " + database + "." + table + " (" + columns + ") FORMAT RowBinary";
        URI uri = URI.create(baseUrl + "/?query=" + URLEncoder.encode(query, StandardCharsets.UTF_8));
        byte[] body = length == data.length ? data : java.util.Arrays.copyOf(data, length);
        Response response;
        try {
            response = transport.post(uri, body);
        } catch (IOException first) {
            try {
                response = transport.post(uri, body);
            } catch (IOException second) {
                second.addSuppressed(first);
                throw new IOException(
                        "ClickHouse insert of " + rows + " " + table + " rows failed twice: " + second, second);
            }
        }
        if (response.status() != 200) {
            String message = response.body().strip();
            if (message.length() > 500) {
                message = message.substring(0, 500);
            }
            throw new IOException(
                    "ClickHouse refused " + rows + " " + table + " rows (" + length + " bytes, HTTP "
                            + response.status() + "): " + message);
        }
    }

    private static Transport httpTransport(String user, String password) {
        HttpClient client =
                HttpClient.newBuilder()
                        .version(HttpClient.Version.HTTP_1_1) // no h2c upgrade on a plain port
                        .connectTimeout(Duration.ofSeconds(10))
                        .build();
        // Basic authentication like the Python writer: ClickHouse 18.16 has no X-ClickHouse-Key
        String token =
                Base64.getEncoder()
                        .encodeToString((user + ":" + password).getBytes(StandardCharsets.UTF_8));
        return (uri, body) -> {
            HttpRequest request =
                    HttpRequest.newBuilder(uri)
                            .timeout(Duration.ofSeconds(300))
                            .header("Authorization", "Basic " + token)
                            .header("Content-Type", "application/octet-stream")
                            .POST(HttpRequest.BodyPublishers.ofByteArray(body))
                            .build();
            HttpResponse<String> response =
                    client.send(request, HttpResponse.BodyHandlers.ofString(StandardCharsets.UTF_8));
            return new Response(response.statusCode(), response.body());
        };
    }
}
