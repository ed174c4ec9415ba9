package io.tickflow.flink;

import org.apache.flink.api.common.typeinfo.BasicTypeInfo;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.api.java.typeutils.RowTypeInfo;
import org.apache.flink.types.Row;

/**
 * Keys {@link FrameBundler}'s output by its key field, as {@code Row(key)}: PyFlink's keyed
 * Python operators read the current key as field 0 of a Row (what its own {@code key_by}
 * produces), so the Python function's {@code ctx.get_current_key()} returns the key string.
 */
public class BundleKey implements KeySelector<Row, Row> {

    private static final long serialVersionUID = 1L;

    @Override
    public Row getKey(Row value) {
        return Row.of(value.getField(0));
    }

    /** The key type: {@code Row(STRING)}. */
    public static TypeInformation<Row> keyType() {
        return new RowTypeInfo(BasicTypeInfo.STRING_TYPE_INFO);
    }
}
