// Package converge checks that a key-value store mirrors the Lenkwerk
// database exactly, as the Lenkwerk agent promises: every row of every
// published table under its key, valued as PostgreSQL's to_jsonb(row)
// evaluated with TimeZone=UTC, and no other key.
//
// Check compares once; Wait polls until the store equals the database or a
// timeout passes, and reports the last difference. Both are meant for tests:
// the agent's own end-to-end tests and those of Bagger's consumers.
//
//	conn, _ := pgx.Connect(ctx, databaseURL)
//	diff, err := converge.Wait(ctx, conn, store, converge.Options{}, 30*time.Second)
//	if err != nil {
//		t.Fatal(err) // names the missing, unexpected and different keys
//	}
//
// The expected keys come from the agent's key templates (package
// agent/keymap) with the same prefix and overrides the agent runs with. A
// table whose template has no column (storage.servermap → /Servermap) holds
// one key: the row with the greatest primary key, its newest generation.
// Keys under the agent's reserved subtree <prefix>/.lenkwerk/ (its
// checkpoints) are not compared.
//
// Values are compared byte for byte: the agent writes to_jsonb's own text.
package converge
