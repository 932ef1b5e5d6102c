package bench

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/chatfleet/chatfleet/internal/rkeys"
	"github.com/chatfleet/chatfleet/internal/testkit"
)

// What a bare PUBLISH of one followed delta costs Redis: the price of live
// delivery apart from the event log (a fenced append script costs about
// 20 µs: the followed paced row's extra CPU over its extra appends). 2,000
// job channels, one subscriber each, 40 deltas of a word each per channel,
// sent one per round trip from 64 connections, or pipelined 40 at a time.
func BenchmarkLivePublish(b *testing.B) {
	const jobs, deltas = 2000, 40
	rd := testkit.StartRedis(b)
	defer rd.Stop()
	ctx := context.Background()
	c := rd.Client()
	defer c.Close()
	channels := make([]string, jobs)
	for i := range channels {
		channels[i] = rkeys.LiveChannel(fmt.Sprintf("job_%026d", i))
	}
	sub := c.Subscribe(ctx, channels...)
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		b.Fatal(err)
	}
	var got sync.WaitGroup
	got.Add(1)
	go func() { // read every message, as an API process would
		defer got.Done()
		for n := 0; n < 2*jobs*deltas; n++ {
			if _, err := sub.ReceiveMessage(ctx); err != nil {
				b.Error(err)
				return
			}
		}
	}()
	msg := `live {"seq":12,"off":40,"delta":" lorem"}`
	run := func(name string, send func(ch string) error) {
		cpu0 := redisCPU(rd)
		var wg sync.WaitGroup
		work := make(chan string)
		for range 64 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ch := range work {
					if err := send(ch); err != nil {
						b.Error(err)
					}
				}
			}()
		}
		for _, ch := range channels {
			work <- ch
		}
		close(work)
		wg.Wait()
		b.Logf("%s: Redis CPU %.2f µs per delta (%d deltas)", name, (redisCPU(rd)-cpu0)/float64(jobs*deltas)*1e6, jobs*deltas)
	}
	run("one PUBLISH per round trip", func(ch string) error {
		for range deltas {
			if n, err := c.Publish(ctx, ch, msg).Result(); err != nil || n != 1 {
				return fmt.Errorf("publish: %d receivers, %v", n, err)
			}
		}
		return nil
	})
	run("PUBLISH pipelined 40 a round trip", func(ch string) error {
		_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for range deltas {
				p.Publish(ctx, ch, msg)
			}
			return nil
		})
		return err
	})
	got.Wait()
}
