// Package secure holds the integration tests that run Lenkwerk "in a fully
// secure manner" against real servers (package tests only; no API):
//
//   - PostgreSQL with ssl=on and the README's pg_hba rules: they refuse
//     plaintext and physical replication, and take client certificates
//     (cert) or scram-sha-256 passwords over TLS only; clients use
//     sslmode=verify-full with the test CA.
//   - etcd (embedded) serving TLS only, with --client-cert-auth and etcd
//     auth enabled; the agent's user holds one role whose permission is the
//     Bagger key range under --prefix.
//
// Certificates are generated per test run by integration/certs. The tests:
//
//   - TestAgentTLSBothSides: the agent (in process) streams as lenkwerk_agent
//     (certificate, verify-full; replication and query connections) into etcd
//     over mTLS as a prefix-restricted user; the store converges, and
//     follow (agent/follow) keeps a copy over verify-full from etcd as a
//     read-only user.
//   - TestEtcdPrefixRole: the agent's etcd user (by password, or by its
//     certificate's CN alone) can write only inside the prefix.
//   - TestRefused: plaintext to PostgreSQL, a wrong CA (PostgreSQL and etcd),
//     etcd without a client certificate and a wrong etcd password are refused.
//   - TestLeastPrivilege: lenkwerk_agent cannot write the Lenkwerk tables,
//     a lenkwerk_config member writes configuration but not the schema;
//     a pgkv reader (lenkwerk_kv_reader, scram over verify-full, password
//     from PGPASSFILE) can List and Watch and cannot Put.
//   - TestSecretsNotPrinted: the lenkwerk binary (agent, migrate, kv) given
//     wrong passwords in URLs and the environment never prints them.
//   - TestRecommendedHBA: README.md's pg_hba.conf, read from the README
//     (startPG runs it for every test): no physical replication
//     (pg_basebackup) and no other database for lenkwerk_agent, and what
//     its REPLICATION attribute allows whatever the grants say.
//
// README.md in this directory is the "Production security" guide these
// tests back.
package secure
