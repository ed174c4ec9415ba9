package io.tickflow.flink;

import org.apache.flink.core.io.SimpleVersionedSerializer;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;

/**
 * An insert handed to ClickHouse and not yet known to be done when a checkpoint was taken: the
 * {@link ClickHouseRowBinaryWriter}'s state. {@code data} is RowBinary for {@code columns}.
 */
record PendingInsert(String table, String columns, byte[] data, long rows) {

    /** Version 1: table and columns (modified UTF-8), rows, the length of data, data. */
    static final class Serializer implements SimpleVersionedSerializer<PendingInsert> {

        @Override
        public int getVersion() {
            return 1;
        }

        @Override
        public byte[] serialize(PendingInsert insert) throws IOException {
            ByteArrayOutputStream bytes = new ByteArrayOutputStream(insert.data().length + 256);
            try (DataOutputStream out = new DataOutputStream(bytes)) {
                out.writeUTF(insert.table());
                out.writeUTF(insert.columns());
                out.writeLong(insert.rows());
                out.writeInt(insert.data().length);
                out.write(insert.data());
            }
            return bytes.toByteArray();
        }

        @Override
        public PendingInsert deserialize(int version, byte[] serialized) throws IOException {
            if (version != 1) {
                throw new IOException("unknown ClickHouse writer state version " + version);
            }
            try (DataInputStream in = new DataInputStream(new ByteArrayInputStream(serialized))) {
                String table = in.readUTF();
                String columns = in.readUTF();
                long rows = in.readLong();
                byte[] data = new byte[in.readInt()];
                in.readFully(data);
                return new PendingInsert(table, columns, data, rows);
            }
        }
    }
}
