package pgjson_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// change is one row as pgoutput streamed it: its relation and its tuple,
// with the values copied out of pgconn's read buffer.
type change struct {
	rel   *pglogrepl.RelationMessage
	tuple *pglogrepl.TupleData
}

// replConn opens a logical replication connection to url with the given
// run-time parameters as startup parameters, and creates a temporary
// pgoutput slot on it (before the caller writes what it wants to read).
func replConn(t *testing.T, ctx context.Context, url string, params map[string]string, slot string) *pgconn.PgConn {
	t.Helper()
	cfg := parseConfig(t, url, params)
	cfg.RuntimeParams["replication"] = "database"
	conn, err := pgconn.ConnectConfig(ctx, &cfg.Config)
	if err != nil {
		t.Fatalf("replication connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	if _, err := pglogrepl.CreateReplicationSlot(ctx, conn, slot, "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{Temporary: true, Mode: pglogrepl.LogicalReplication}); err != nil {
		t.Fatalf("create slot: %v", err)
	}
	return conn
}

// stream starts replication of publication pub on conn and returns the
// first want inserted rows, in commit order.
func stream(t *testing.T, ctx context.Context, conn *pgconn.PgConn, slot, pub string, want int) []change {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	err := pglogrepl.StartReplication(ctx, conn, slot, 0, pglogrepl.StartReplicationOptions{
		Mode:       pglogrepl.LogicalReplication,
		PluginArgs: []string{"proto_version '1'", fmt.Sprintf("publication_names '%s'", pub)},
	})
	if err != nil {
		t.Fatalf("start replication: %v", err)
	}
	rels := map[uint32]*pglogrepl.RelationMessage{}
	var got []change
	var pos pglogrepl.LSN
	for len(got) < want {
		raw, err := conn.ReceiveMessage(ctx)
		if err != nil {
			t.Fatalf("receive (%d of %d rows so far): %v", len(got), want, err)
		}
		var cd *pgproto3.CopyData
		switch m := raw.(type) {
		case *pgproto3.CopyData:
			cd = m
		case *pgproto3.ErrorResponse:
			t.Fatalf("replication error: %v", pgconn.ErrorResponseToPgError(m))
		default:
			continue
		}
		switch cd.Data[0] {
		case pglogrepl.PrimaryKeepaliveMessageByteID:
			pkm, err := pglogrepl.ParsePrimaryKeepaliveMessage(cd.Data[1:])
			if err != nil {
				t.Fatal(err)
			}
			if pkm.ReplyRequested {
				if err := pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{WALWritePosition: pos, WALFlushPosition: pos, WALApplyPosition: pos}); err != nil {
					t.Fatal(err)
				}
			}
		case pglogrepl.XLogDataByteID:
			xld, err := pglogrepl.ParseXLogData(cd.Data[1:])
			if err != nil {
				t.Fatal(err)
			}
			msg, err := pglogrepl.Parse(xld.WALData)
			if err != nil {
				t.Fatalf("parse pgoutput message: %v", err)
			}
			switch m := msg.(type) {
			case *pglogrepl.RelationMessage:
				rels[m.RelationID] = m
			case *pglogrepl.InsertMessage:
				rel := rels[m.RelationID]
				if rel == nil {
					t.Fatalf("insert into unknown relation %d", m.RelationID)
				}
				got = append(got, change{rel: rel, tuple: copyTuple(m.Tuple)})
			case *pglogrepl.CommitMessage:
				pos = m.TransactionEndLSN
			}
		}
	}
	return got
}

func copyTuple(in *pglogrepl.TupleData) *pglogrepl.TupleData {
	out := &pglogrepl.TupleData{ColumnNum: in.ColumnNum}
	for _, c := range in.Columns {
		cc := *c
		cc.Data = bytes.Clone(c.Data)
		out.Columns = append(out.Columns, &cc)
	}
	return out
}
