package mem

import (
	"fmt"
	"slices"
	"sort"
	"sync"

	"github.com/bagger/lenkwerk/kvdriver"
)

// db is the state one or more Stores share: the keys, the revision counter
// and the change history watches read.
type db struct {
	cfg Config

	mu        sync.RWMutex
	rev       int64
	compacted int64 // history at and before this revision is gone
	data      map[string]record
	log       []revision // ascending, contiguous, all after compacted
	changed   chan struct{}
}

type record struct {
	value  []byte
	modRev int64
}

// revision is the events of one committed write.
type revision struct {
	rev    int64
	events []kvdriver.Event
}

// newDB returns an empty store at revision 1, as etcd starts: a List of an
// empty store must return a revision a watch can start after, and
// Watch's afterRev 0 means "from now", not "from the beginning".
func newDB(cfg Config) *db {
	return &db{cfg: cfg, rev: 1, compacted: 1, data: map[string]record{}, changed: make(chan struct{})}
}

var (
	namedMu sync.Mutex
	named   = map[string]*db{}
)

// namedDB returns the shared store name, creating it with cfg.
func namedDB(name string, asked, cfg Config) (*db, error) {
	namedMu.Lock()
	defer namedMu.Unlock()
	if d, ok := named[name]; ok {
		if c := d.cfg.conflicts(asked); c != "" {
			return nil, fmt.Errorf("%w: mem store %q already exists with other settings: %s", kvdriver.ErrInvalidURL, name, c)
		}
		return d, nil
	}
	d := newDB(cfg)
	named[name] = d
	return d, nil
}

func (d *db) get(key string) (kvdriver.KV, bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	r, ok := d.data[key]
	if !ok {
		return kvdriver.KV{}, false
	}
	return kvdriver.KV{Key: key, Value: slices.Clone(r.value), ModRevision: r.modRev}, true
}

func (d *db) list(prefix string) ([]kvdriver.KV, int64) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	var out []kvdriver.KV
	for k, r := range d.data {
		if kvdriver.InPrefix(k, prefix) {
			out = append(out, kvdriver.KV{Key: k, Value: slices.Clone(r.value), ModRevision: r.modRev})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, d.rev
}

// commit applies validated ops as one revision. Deletes of absent keys
// produce no event; a batch with no event creates no revision. Its
// Requires are checked first, under the same lock as the writes.
func (d *db) commit(ops []kvdriver.Op) (int64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, op := range ops {
		if op.Type != kvdriver.OpRequire {
			continue
		}
		if have := d.data[op.Key].modRev; have != op.ModRevision {
			return 0, fmt.Errorf("%w: %q is at revision %d, required %d", kvdriver.ErrConflict, op.Key, have, op.ModRevision)
		}
	}
	rev := d.rev + 1
	events := make([]kvdriver.Event, 0, len(ops))
	for _, op := range ops {
		switch op.Type {
		case kvdriver.OpPut:
			v := slices.Clone(op.Value)
			d.data[op.Key] = record{value: v, modRev: rev}
			events = append(events, kvdriver.Event{Type: kvdriver.OpPut, Key: op.Key, Value: v, Revision: rev})
		case kvdriver.OpDelete:
			if _, ok := d.data[op.Key]; ok {
				delete(d.data, op.Key)
				events = append(events, kvdriver.Event{Type: kvdriver.OpDelete, Key: op.Key, Revision: rev})
			}
		}
	}
	if len(events) == 0 {
		return d.rev, nil
	}
	d.rev = rev
	d.log = append(d.log, revision{rev: rev, events: events})
	if over := len(d.log) - d.cfg.History; over > 0 {
		d.dropThrough(d.log[over-1].rev)
	}
	close(d.changed)
	d.changed = make(chan struct{})
	return rev, nil
}

// dropThrough discards history at and before rev. d.mu is held.
func (d *db) dropThrough(rev int64) {
	i := sort.Search(len(d.log), func(i int) bool { return d.log[i].rev > rev })
	// Copy when most of the backing array is garbage, so memory is freed.
	if i > len(d.log)/2 {
		d.log = append([]revision(nil), d.log[i:]...)
	} else {
		clear(d.log[:i])
		d.log = d.log[i:]
	}
	d.compacted = rev
}

func (d *db) compact(rev int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if rev > d.rev {
		return fmt.Errorf("revision %d is beyond the store revision %d", rev, d.rev)
	}
	if rev > d.compacted {
		d.dropThrough(rev)
	}
	return nil
}

func (d *db) current() int64 {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.rev
}

// maxRevsPerResponse bounds one watch response, so a watcher far behind
// catches up in steps (whole revisions each).
const maxRevsPerResponse = 1000

// since returns the events at or below prefix in the revisions after
// after, the revision they bring the watcher up to, and a channel closed on
// the next commit (for when there is nothing yet).
func (d *db) since(prefix string, after int64) ([]kvdriver.Event, int64, <-chan struct{}, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if after < d.compacted {
		return nil, 0, nil, fmt.Errorf("%w: watch from revision %d, history kept from revision %d", kvdriver.ErrCompacted, after+1, d.compacted+1)
	}
	i := sort.Search(len(d.log), func(i int) bool { return d.log[i].rev > after })
	upTo := max(after, d.rev)
	var evs []kvdriver.Event
	root := prefix == "/"
	for n := 0; i < len(d.log); i, n = i+1, n+1 {
		if n == maxRevsPerResponse {
			upTo = d.log[i-1].rev
			break
		}
		for _, ev := range d.log[i].events {
			if root || kvdriver.InPrefix(ev.Key, prefix) {
				evs = append(evs, ev)
			}
		}
	}
	if after > d.rev {
		upTo = after
	}
	return evs, upTo, d.changed, nil
}
