package redisconn

import (
	"testing"

	"github.com/hibiken/asynq"
)

func TestClusterURLs(t *testing.T) {
	opt, err := ConnOpt("rediss-cluster://app:s%40cret@n1.example:7000,n2.example:7001")
	if err != nil {
		t.Fatal(err)
	}
	o, ok := opt.(asynq.RedisClusterClientOpt)
	if !ok || len(o.Addrs) != 2 || o.Addrs[1] != "n2.example:7001" || o.Username != "app" || o.Password != "s@cret" ||
		o.TLSConfig == nil || o.TLSConfig.ServerName != "n1.example" {
		t.Fatalf("%+v", opt)
	}
	if o, _ := ConnOpt("redis-cluster://127.0.0.1:7000"); o.(asynq.RedisClusterClientOpt).TLSConfig != nil {
		t.Fatal("redis-cluster:// turned TLS on")
	}
	if _, err := ConnOpt("redis-cluster://n1:7000,n2"); err == nil {
		t.Fatal("an address without a port was accepted")
	}
}
