package io.tickflow.flink;

import java.io.IOException;
import java.net.URI;
import java.net.URLEncoder;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.Arrays;
import java.util.Base64;
import java.util.List;
import java.util.Set;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * RowBinary inserts over ClickHouse's HTTP interface (the twin of the Python RowBinaryWriter).
 *
 * <p>A failed insert is one of two kinds. {@link Unavailable}: ClickHouse could not take it now
 * (no connection, a reset, no answer within the request timeout, or an HTTP 5xx whose error
 * code is not a data or schema error: memory limit, too many parts, a server shutting down);
 * the same insert may succeed later and the writer retries it. Any other answer than 200 is a
 * refusal (bad data, an unknown table or column, no access): sending it again cannot help, and
 * it fails the job loudly.
 */
class ClickHouseHttp {

    /** Default request timeout: well above an insert's usual milliseconds to seconds. */
    static final Duration DEFAULT_REQUEST_TIMEOUT = Duration.ofSeconds(30);

    /** Default connect timeout (a refused connection fails at once; this is for lost packets). */
    static final Duration DEFAULT_CONNECT_TIMEOUT = Duration.ofSeconds(5);

    /**
     * ClickHouse error codes that mean "these rows or this query will never be accepted": the
     * data (6, 27, 33, 38, 41, 53, 69, 70, 72, 117, 321), the schema (16, 47, 60, 62, 81) or
     * access (192, 193, 194, 497, 516). ClickHouse 18.16 answers most of them with HTTP 500.
     */
    static final Set<Integer> REFUSAL_CODES = Set.of(
            6, 27, 33, 38, 41, 53, 69, 70, 72, 117, 321, 16, 47, 60, 62, 81, 192, 193, 194, 497, 516);

    private static final Pattern ERROR_CODE = Pattern.compile("^Code: (\\d+)");

    /** ClickHouse could not take an insert now; the same insert may succeed later. */
    static final class Unavailable extends IOException {
        private static final long serialVersionUID = 1L;

        Unavailable(String message, Throwable cause) {
            super(message, cause);
        }
    }

    /** What an insert sends: the query and its body. */
    interface Transport {
        /** Status and body of the answer. */
        Response post(URI uri, byte[] body) throws IOException, InterruptedException;
    }

    record Response(int status, String body) {}

    private final List<String> baseUrls;
    private final Transport transport;
    private int current;

    ClickHouseHttp(String baseUrls, String user, String password) {
        this(baseUrls, user, password, DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT);
    }

    ClickHouseHttp(
            String baseUrls, String user, String password, Duration connectTimeout, Duration requestTimeout) {
        this(baseUrls, httpTransport(user, password, connectTimeout, requestTimeout));
    }

    /**
     * {@code baseUrls}: one server's URL, or the comma-separated URLs of a replicated set (an
     * insert goes to the first that takes it).
     */
    ClickHouseHttp(String baseUrls, Transport transport) {
        this.baseUrls = Arrays.stream(baseUrls.split(",")).map(String::strip).filter(u -> !u.isEmpty()).toList();
        if (this.baseUrls.isEmpty()) {
            throw new IllegalArgumentException("no ClickHouse URL in '" + baseUrls + "'");
        }
        this.transport = transport;
    }

    /** The URL inserts go to now: the last server that took one. */
    String currentUrl() {
        return baseUrls.get(current);
    }

    /**
     * Inserts {@code rows} rows of RowBinary {@code data}. Throws {@link Unavailable} when
     * ClickHouse could not take them now (the caller retries), an IOException with ClickHouse's
     * message when it refused them. With replicas, an insert the current server cannot take now
     * goes to the next, which stays current while it takes inserts: the replicas share every
     * table, and the rows are idempotent.
     */
    void insert(String database, String table, String columns, byte[] data, int length, long rows)
            throws IOException, InterruptedException {
        Unavailable last = null;
        for (int tried = 0; tried < baseUrls.size(); tried++) {
            try {
                insertInto(currentUrl(), database, table, columns, data, length, rows);
                return;
            } catch (Unavailable e) {
                if (last != null) {
                    e.addSuppressed(last);
                }
                last = e;
                current = (current + 1) % baseUrls.size();
            }
        }
        throw last;
    }

    /**
     * One server's insert. One I/O error is retried at once: ClickHouse closes idle keep-alive
     * connections (after 3 s on 18.16) and the rows are idempotent, so a repeat is harmless.
     */
    private void insertInto(
            String baseUrl, String database, String table, String columns, byte[] data, int length, long rows)
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
                throw new Unavailable(
                        "ClickHouse insert of " + rows + " " + table + " rows into " + baseUrl + " failed twice: " + second, second);
            }
        }
        if (response.status() != 200) {
            String message = response.body().strip();
            if (message.length() > 500) {
                message = message.substring(0, 500);
            }
            String text = rows + " " + table + " rows (" + length + " bytes, HTTP " + response.status() + "): "
                    + message;
            if (mayPassLater(response.status(), message)) {
                throw new Unavailable("ClickHouse could not take " + text, null);
            }
            throw new IOException("ClickHouse refused " + text);
        }
    }

    /** Whether an answer other than 200 may turn into a 200 if the same insert is sent later. */
    static boolean mayPassLater(int status, String body) {
        if (status == 408 || status == 429) {
            return true;
        }
        if (status < 500) {
            return false;
        }
        Matcher code = ERROR_CODE.matcher(body);
        return !(code.find() && REFUSAL_CODES.contains(Integer.parseInt(code.group(1))));
    }

    private static Transport httpTransport(
            String user, String password, Duration connectTimeout, Duration requestTimeout) {
        HttpClient client =
                HttpClient.newBuilder()
                        .version(HttpClient.Version.HTTP_1_1) // no h2c upgrade on a plain port
                        .connectTimeout(connectTimeout)
                        .build();
        // Basic authentication like the Python writer: ClickHouse 18.16 has no X-ClickHouse-Key
        String token =
                Base64.getEncoder()
                        .encodeToString((user + ":" + password).getBytes(StandardCharsets.UTF_8));
        return (uri, body) -> {
            HttpRequest request =
                    HttpRequest.newBuilder(uri)
                            .timeout(requestTimeout)
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
