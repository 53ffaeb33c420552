package main

// The store drivers lenkwerk offers for --kv URLs.
import (
	_ "github.com/bagger/lenkwerk/kvdriver/etcd" // etcd://
	_ "github.com/bagger/lenkwerk/kvdriver/mem"  // mem://[name]
	_ "github.com/bagger/lenkwerk/kvdriver/pgkv" // postgres://
)
