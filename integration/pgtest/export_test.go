package pgtest

// ReapStale exposes reapStale to the tests.
var ReapStale = reapStale
