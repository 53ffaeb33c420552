// Package harness brings up a real Lenkwerk for a test — PostgreSQL with the
// Lenkwerk database migrated, a key-value store and the agent mirroring one
// into the other — in one call, tears it down when the test ends, and has
// levers to break it. It is the integration test harness of Bagger's
// components (storage-node agents, configuration tools) and of Lenkwerk's
// own scenarios.
//
// # A test in a few lines
//
//	func TestNodeOnline(t *testing.T) {
//		s := harness.Start(t) // PostgreSQL, etcd, agent; gone after the test
//
//		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
//		defer cancel()
//		conn, err := pgx.Connect(ctx, s.ConfigURL()) // as lenkwerk_config
//		if err != nil {
//			t.Fatal(err)
//		}
//		defer conn.Close(context.Background())
//
//		var id int
//		err = conn.QueryRow(ctx, "SELECT id FROM storage.register_pg_instance('db1', 5432, 'bagger')").Scan(&id)
//		if err != nil {
//			t.Fatal(err)
//		}
//		if _, err := conn.Exec(ctx, "SELECT storage.set_pg_instance_status($1, 3)", id); err != nil {
//			t.Fatal(err)
//		}
//
//		// What a storage node sees: the row as JSON (to_jsonb) under its key.
//		var node struct {
//			Host   string `json:"host"`
//			Port   int    `json:"port"`
//			Status int    `json:"status"`
//		}
//		err = s.WaitForKey(ctx, "/PostgresInstance/db1/5432", func(value []byte, exists bool) bool {
//			return exists && json.Unmarshal(value, &node) == nil && node.Status == 3
//		})
//		if err != nil {
//			t.Fatal(err)
//		}
//	}
//
// The examples Example_local and Example_containers run this body (which
// also returns what the store held) on each backend, and go test checks
// their output.
//
// # What Start gives
//
// Start returns once the agent has made its initial copy and streams
// changes. The Stack then offers:
//
//   - DatabaseURL: the Lenkwerk database as a superuser (schema storage, the
//     Bagger functions, publication and slot in place);
//   - ConfigURL: the same database acting as lenkwerk_config, the role of
//     Bagger's configuration tools (it is NOLOGIN, so the URL logs in as
//     lenkwerk_config_login, a member of it and nothing else, and takes the
//     role with options=-c role=lenkwerk_config; SET ROLE gains nothing);
//   - KVURL and Store: the key-value store's URL (etcd://…, or postgres://…
//     for pgkv) and an open kvdriver.Store on it, owned by the Stack;
//   - WaitForKey: wait until a key satisfies a predicate (Exists, Absent,
//     Equals, or your own on the JSON value);
//   - WaitCaughtUp: wait until the store reflects every transaction
//     committed before the call — the way to assert that something is NOT
//     in the store, or to compare the whole store with the database
//     (package integration/converge does the comparison).
//
// # The agent and other lenkwerk processes
//
// Agent is the Stack's agent, a Process: Start, Kill, Stop (SIGTERM, and
// its exit code), Running, Log and WaitLog (wait for a line of its
// output), UnexpectedExits (exits nobody asked for — an agent should
// have none) and Exec (run a lenkwerk command where it runs, e.g. inside
// its container). WithAgentStopped has Start return before the agent's
// first start, so a test can fill the database (or break something) first:
//
//	s := harness.Start(t, harness.WithAgentStopped())
//	// … rows for the initial sync to copy …
//	if err := s.Agent().Start(ctx); err != nil { t.Fatal(err) }
//	// … later: a clean shutdown must exit 0
//	if code, err := s.Agent().Stop(ctx); err != nil || code != 0 { t.Fatal(code, err) }
//
// The agent runs `lenkwerk agent` with --database-url (as lenkwerk_agent,
// application_name its name), --kv, --log-level, --prefix and what
// WithAgentArgs and WithKeyTemplate add; AgentFlags returns them.
// AddAgent creates a second agent on the same slot and store (a standby,
// for failover tests); Command any long-running lenkwerk process next to
// the agent (`lenkwerk kv watch`), and Lenkwerk runs a command to its end
// (`lenkwerk resync` with AgentFlags). Such commands take the URLs as
// processes of the Stack reach them: AgentDatabaseURL and AgentKVURL.
// WithMigrateCommand migrates with `lenkwerk migrate up` (a migrate job
// container on the containers backend) instead of in the test process;
// WithReadOnlyAgent runs the agents' containers with a read-only root
// filesystem, and Process.Container gives the container (Inspect, Top).
//
// # Choosing the store and the backend
//
// WithKV picks the store: Etcd (one member, the default), EtcdCluster (three
// members) or PGKV (the pgkv driver in the Lenkwerk database itself, as a
// Postgres-only deployment runs). WithPrefix runs the agent under a key
// prefix.
//
// Two backends run the same Stack:
//
//   - Containers: PostgreSQL, etcd and the agent as Docker containers,
//     through testcontainers-go and package integration/containers.
//     PostgreSQL and etcd are on two networks of the Stack's own, lenkwerk
//     containers on both, so a partition can cut one way and not the
//     other. Images come from docker/build-images.sh (make
//     images), built on first use; LENKWERK_PG_IMAGE, LENKWERK_ETCD_IMAGE and
//     LENKWERK_AGENT_IMAGE name others (e.g. postgres:16 where a registry is
//     reachable). Ryuk is off; the test's Cleanup removes every container and
//     network, failed or not.
//   - Local: the stack of lenkwerk dev (agent/devstack): a private
//     PostgreSQL cluster from the machine's binaries ($LENKWERK_PG_BINDIR
//     or pg_config), etcd embedded in the test process, and the agent as a child
//     process: `lenkwerk agent`, built once per test binary with go build
//     (from the test's module, which must require Lenkwerk), or the binary
//     named by LENKWERK_BIN.
//
// WithBackend, or LENKWERK_HARNESS_BACKEND=local|containers, picks one;
// otherwise Start uses containers when a Docker engine answers and local
// processes when not. A Stack has no global state: each has its own
// servers, ports, directories, slot and networks, so several run side by
// side in one test binary (and in parallel tests).
//
// # Breaking it
//
// The fault levers return once the fault is in place, or once the part is
// back and serving:
//
//	lever                          local   containers
//	KillAgent / RestartAgent       yes     yes
//	StopStore / StartStore         yes     yes   (PGKV: stops PostgreSQL itself)
//	KillStore                      etcd    yes   (no clean shutdown)
//	StopNode(i) / StartNode(i)     yes     yes   (etcd; not PGKV)
//	StopPostgres / StartPostgres   yes     yes   (fast shutdown)
//	RestartPostgres                yes     yes
//	KillPostgres                   no      yes   (crash recovery at the start)
//	PartitionAgentFromDB / Heal    no      yes   (agent↔PostgreSQL only; the
//	                                              store stays reachable, but
//	                                              with PGKV it is PostgreSQL)
//	PartitionAgent / Heal          no      yes   (the agent loses every network)
//	SwitchoverPostgres             no      WithPatroni (Patroni's POST /switchover)
//	FailoverPostgres               no      WithPatroni (the primary's container killed)
//	RejoinPostgres                 no      WithPatroni (killed members back as replicas)
//
// WithPatroni runs the database on a two-member Patroni cluster; the
// PostgreSQL levers above then answer ErrUnsupported.
//
// A lever the Stack cannot pull returns an error wrapping ErrUnsupported
// (and errors.ErrUnsupported). The agent is meant to ride every fault out:
// after the lever, make changes, undo the fault and check with
// WaitCaughtUp and converge.Wait that nothing was lost:
//
//	if err := s.StopStore(ctx); err != nil { t.Fatal(err) }
//	// … changes through ConfigURL while the store is down …
//	if err := s.StartStore(ctx); err != nil { t.Fatal(err) }
//	if err := s.WaitCaughtUp(ctx); err != nil { t.Fatal(err) }
//	if _, err := converge.Wait(ctx, converge.URL(s.DatabaseURL()), s.Store(),
//		converge.Options{Prefix: s.Prefix()}, time.Minute); err != nil {
//		t.Fatal(err)
//	}
//
// On the containers backend a restarted container has new host ports:
// DatabaseURL, KVURL and Store always return the current ones, and the
// Store returned before StartStore or StartNode is closed, so ask for it
// again after those levers.
//
// # What it does not cover
//
// Two decisions keep the options few:
//
//   - integration/secure keeps a stack of its own: TLS between the agent,
//     PostgreSQL and etcd, etcd authentication and password roles are not
//     options of this package (each would be a server configuration of
//     both backends).
//   - PGKV keeps the store in the Lenkwerk database (schema lenkwerk_kv),
//     as a Postgres-only deployment does. A store in a database of its own
//     on the same server, which Lenkwerk also supports, is not a layout
//     the harness offers, so the scenarios no longer cover it.
//
// # Lenkwerk's own scenarios
//
// This package is the harness of Lenkwerk's own end-to-end tests too:
// integration/e2e runs its scenarios (the happy path, chaos, outages,
// failover, schema changes, large transactions, resync) on the local
// backend, against the lenkwerk binary it builds (LENKWERK_BIN), and
// integration/containers its fault scenarios on the containers backend.
// They use only what this package exports.
//
// # When a test fails
//
// The last 64 KiB of the output of every lenkwerk process of the Stack
// (the agent's --log-level is info; WithAgentLogLevel changes it) are
// printed with the failure, and the last 8 KiB of every server container's
// output on the containers backend. UnexpectedExits names each exit's
// status (exit code or signal).
package harness
