// Package pgjson encodes rows as PostgreSQL's logical replication sends
// them (pgoutput, text format: each value its type's output text, NULL
// apart) into the JSON that to_jsonb(row)::text gives, byte for byte, in a
// session with TimeZone=UTC.
//
// The agent keeps one TypeMap, builds an Encoder per relation from each
// Relation message and appends rows into its own buffers:
//
//	types := pgjson.NewTypeMap()
//	// on a Relation message (a new relation, or its columns changed):
//	types.Invalidate() // types may have changed too
//	cols := pgjson.ColumnsOf(rel)
//	err := pgjson.CheckColumns(ctx, catalogConn, rel.RelationID, cols)
//	enc, err := types.Encoder(ctx, catalogConn, cols)
//	// on Insert/Update, before the next message is received (pglogrepl's
//	// tuple data points into pgconn's read buffer):
//	buf, err = enc.AppendTuple(buf[:0], ins.Tuple)
//
// The replication connection must be opened with SessionSettings, which
// fix the walsender's output formats to what the encoder expects; a
// connection that computes to_jsonb itself (a table copy) should use them
// too.
//
// What cannot be equal, and is reported rather than written wrong:
// generated columns, which pgoutput does not send (CheckColumns,
// ErrGeneratedColumn); unchanged TOAST values, which it does not send
// either (ErrUnchangedToast); user types with a cast to json
// (ErrUnsupportedType); json values to_jsonb itself rejects (\u0000,
// numbers beyond numeric's range).
//
// What to_jsonb does, and so what this package does (json_categorize_type
// and datum_to_jsonb in PostgreSQL): domains are encoded as their base
// type; smallint, integer, bigint, numeric, real and double precision
// become JSON numbers written as numeric_out(numeric_in(text)) (so 1e+308
// becomes a 309-digit integer and -0 becomes 0), except NaN and ±Infinity,
// which become strings; boolean becomes true/false; json is parsed into
// jsonb (keys sorted by length then bytes, last duplicate wins, escapes
// decoded, numbers as numeric); jsonb is copied; timestamp and timestamptz
// use the XSD form ("2024-01-02T03:04:05+00:00"); arrays become nested JSON
// arrays whatever their lower bounds; composites become objects; every
// other type (text types, enums, oid, date, time, interval, uuid, bytea,
// network, geometric, range, bit, text search, xml, money, ...) becomes the
// JSON string of its output text. A user type with a cast to json would be
// encoded by that cast; such types are refused (ErrUnsupportedType).
package pgjson
