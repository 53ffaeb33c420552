package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/jackc/pglogrepl"
)

// ReservedSegment is the first key segment (under the prefix) of the
// agent's own keys. Table keys never use it, and initial sync never deletes
// below it.
const ReservedSegment = ".lenkwerk"

// CheckpointKey is the store key holding the checkpoint of slot:
// "<prefix>/.lenkwerk/checkpoint/<slot>". A trailing '/' on prefix
// changes nothing.
func CheckpointKey(prefix, slot string) string {
	return strings.TrimSuffix(prefix, "/") + "/" + ReservedSegment + "/checkpoint/" + slot
}

// Checkpoint is the agent's position in the replication stream, written in
// the same store batch as the data it covers.
type Checkpoint struct {
	// LSN is the end LSN of the last transaction whose changes the store
	// has (or the slot's consistent point after an initial sync, or an
	// idle keepalive position). Transactions whose commit starts before it
	// are skipped on replay.
	LSN pglogrepl.LSN
	// CommitLSN is the commit LSN of that transaction (0 when LSN does not
	// come from a transaction).
	CommitLSN pglogrepl.LSN
	// Time is the transaction's commit time, or when the checkpoint was
	// taken.
	Time time.Time
	// Tables are the published tables ("schema.table") whose rows have
	// been copied, each with the shape (a hash of its columns and their
	// types) it was copied with. A published table missing here, or whose
	// shape changed (ADD/DROP COLUMN, type change: to_jsonb of every row
	// changes, but no row change is streamed), is copied again. A table
	// removed from the publication stays with shape "" until the next
	// initial sync deletes its keys.
	Tables map[string]string
	// SystemID and Timeline are the database's system identifier and
	// timeline (IDENTIFY_SYSTEM) of the session that wrote the checkpoint:
	// an LSN means something only on one history. A checkpoint written
	// before they were recorded has "" and 0.
	SystemID string
	Timeline int32
}

type checkpointJSON struct {
	LSN       string            `json:"lsn"`
	CommitLSN string            `json:"commit_lsn,omitempty"`
	Time      string            `json:"time"`
	Tables    map[string]string `json:"tables"`
	SystemID  string            `json:"system_id,omitempty"`
	Timeline  int32             `json:"timeline,omitempty"`
}

// MarshalJSON encodes {"lsn":"0/16B3748","commit_lsn":"0/16B3720","time":"…","tables":{…},
// "system_id":"7312…","timeline":2}.
func (c Checkpoint) MarshalJSON() ([]byte, error) {
	j := checkpointJSON{LSN: c.LSN.String(), Time: c.Time.UTC().Format(time.RFC3339Nano), Tables: c.Tables, SystemID: c.SystemID, Timeline: c.Timeline}
	if c.CommitLSN != 0 {
		j.CommitLSN = c.CommitLSN.String()
	}
	if j.Tables == nil {
		j.Tables = map[string]string{}
	}
	return json.Marshal(j)
}

// UnmarshalJSON decodes what MarshalJSON encodes.
func (c *Checkpoint) UnmarshalJSON(b []byte) error {
	var j checkpointJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	lsn, err := pglogrepl.ParseLSN(j.LSN)
	if err != nil {
		return fmt.Errorf("checkpoint lsn %q: %w", j.LSN, err)
	}
	var commit pglogrepl.LSN
	if j.CommitLSN != "" {
		if commit, err = pglogrepl.ParseLSN(j.CommitLSN); err != nil {
			return fmt.Errorf("checkpoint commit_lsn %q: %w", j.CommitLSN, err)
		}
	}
	var t time.Time
	if j.Time != "" {
		if t, err = time.Parse(time.RFC3339Nano, j.Time); err != nil {
			return fmt.Errorf("checkpoint time %q: %w", j.Time, err)
		}
	}
	if j.Timeline < 0 {
		return fmt.Errorf("checkpoint timeline %d: negative", j.Timeline)
	}
	*c = Checkpoint{LSN: lsn, CommitLSN: commit, Time: t, Tables: j.Tables, SystemID: j.SystemID, Timeline: j.Timeline}
	return nil
}

func (c Checkpoint) value() []byte {
	b, _ := c.MarshalJSON() // only strings: cannot fail
	return b
}

// ReadCheckpoint returns the checkpoint of slot stored under prefix; ok is
// false when the store has none (a new or wiped store).
func ReadCheckpoint(ctx context.Context, store *kvdriver.Store, prefix, slot string) (c Checkpoint, ok bool, err error) {
	c, _, ok, err = readCheckpoint(ctx, store, CheckpointKey(prefix, slot))
	return c, ok, err
}

// readCheckpoint is ReadCheckpoint that also returns the checkpoint key's
// ModRevision (0 when absent): the session's fence.
func readCheckpoint(ctx context.Context, store *kvdriver.Store, key string) (c Checkpoint, modRev int64, ok bool, err error) {
	kv, err := store.Get(ctx, key)
	if errors.Is(err, kvdriver.ErrNotFound) {
		return Checkpoint{}, 0, false, nil
	}
	if err != nil {
		return Checkpoint{}, 0, false, fmt.Errorf("read checkpoint: %w", err)
	}
	if err := json.Unmarshal(kv.Value, &c); err != nil {
		return Checkpoint{}, 0, false, fmt.Errorf("read checkpoint %s: %w", kv.Key, err)
	}
	if c.Tables == nil {
		c.Tables = map[string]string{}
	}
	return c, kv.ModRevision, true, nil
}
