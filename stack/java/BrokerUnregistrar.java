// Unregisters lost Kafka brokers on request: the supervisor writes a broker id per line on
// stdin as soon as it sees the broker's process gone, and reads "ok <id>" or
// "error <id> <message>" back. The controllers then move the broker's partitions at once
// instead of after its session timeout; the broker registers again when it is started.
// One warm JVM for the stack's life: started per loss, a JVM took longer than the session.
//
//     java -cp '<kafka jars>/*' BrokerUnregistrar.java <client.properties>
import java.io.BufferedReader;
import java.io.FileInputStream;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.Properties;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;

public class BrokerUnregistrar {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        try (FileInputStream in = new FileInputStream(args[0])) {
            props.load(in);
        }
        try (Admin admin = Admin.create(props);
                BufferedReader lines = new BufferedReader(
                        new InputStreamReader(System.in, StandardCharsets.UTF_8))) {
            // connect and authenticate now, not on the first loss
            admin.describeCluster().clusterId().get(30, TimeUnit.SECONDS);
            System.out.println("ready");
            System.out.flush();
            String line;
            while ((line = lines.readLine()) != null) {
                String id = line.trim();
                if (id.isEmpty()) {
                    continue;
                }
                try {
                    admin.unregisterBroker(Integer.parseInt(id)).all().get(5, TimeUnit.SECONDS);
                    System.out.println("ok " + id);
                } catch (Exception e) {
                    Throwable cause = e.getCause() != null ? e.getCause() : e;
                    System.out.println("error " + id + " " + cause);
                }
                System.out.flush();
            }
        }
    }
}
