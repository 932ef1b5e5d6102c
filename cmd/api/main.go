// Command api serves chatfleet's HTTP API. With --standalone it also runs a
// worker in-process and, when CHATFLEET_REDIS_URL is empty, an embedded Redis:
// a development mode that needs nothing installed.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/api"
	"github.com/chatfleet/chatfleet/config"
	"github.com/chatfleet/chatfleet/health"
	"github.com/chatfleet/chatfleet/internal/httpserve"
	"github.com/chatfleet/chatfleet/internal/logging"
	"github.com/chatfleet/chatfleet/internal/redisconn"
	"github.com/chatfleet/chatfleet/llm"
	"github.com/chatfleet/chatfleet/orchestration"
	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/stream"
)

var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Getenv, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `usage: api [--standalone] [config check]

  api                 serve the HTTP API against CHATFLEET_REDIS_URL
  api --standalone    serve the API with an in-process worker (and an embedded
                      Redis when CHATFLEET_REDIS_URL is empty): development only
  api config check    validate the configuration and exit
`

func run(ctx context.Context, getenv func(string) string, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("api", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage) }
	standalone := fs.Bool("standalone", false, "run an in-process worker (and embedded Redis when no URL is set)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	role := config.RoleAPI
	if *standalone {
		role = config.RoleStandalone
	}
	switch rest := fs.Args(); {
	case len(rest) == 2 && rest[0] == "config" && rest[1] == "check":
		return config.Check(role, getenv, stdout, stderr)
	case len(rest) > 0:
		fs.Usage()
		return 2
	}
	cfg, err := config.Load(role, getenv)
	if err != nil {
		fmt.Fprintf(stderr, "invalid configuration:\n%s\n", err)
		return 1
	}
	log := logging.New(stderr, cfg.LogLevel, "api").With().Str("version", version).Logger()
	if err := serve(ctx, cfg, *standalone, log); err != nil {
		log.Error().Err(err).Msg("api stopped with an error")
		return 1
	}
	return 0
}

func serve(ctx context.Context, cfg config.Config, standalone bool, log zerolog.Logger) (err error) {
	var closers []func() error // run last in, first out
	defer func() {
		for i := len(closers) - 1; i >= 0; i-- {
			err = errors.Join(err, closers[i]())
		}
	}()

	if standalone {
		log.Warn().Msg("STANDALONE DEVELOPMENT MODE: API and worker in one process; not for production")
		if cfg.RedisURL == "" {
			url, stopRedis, err := startEmbeddedRedis(log)
			if err != nil {
				return err
			}
			closers = append(closers, stopRedis)
			cfg.RedisURL = url
		}
	}
	rdb, err := redisconn.Open(cfg.RedisURL, "chatfleet-api", log)
	if err != nil {
		return err
	}
	closers = append(closers, rdb.Close)

	insp := asynq.NewInspectorFromRedisClient(rdb)
	queue := asynq.NewClientFromRedisClient(rdb)
	st := store.New(rdb, insp, store.OptionsFrom(cfg))
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	checker := health.NewChecker(rdb, version, reg)

	hub := stream.NewHub(rdb, log)
	closers = append(closers, hub.Close)

	streams, endStreams := context.WithCancel(context.Background())
	defer endStreams()
	e := api.NewEcho(log, reg)
	api.New(st, queue, insp, hub, api.Options{
		APIKeys: cfg.APIKeys, MaxRetries: cfg.MaxRetries, Retention: cfg.JobRetention, Heartbeat: cfg.SSEHeartbeat, Registerer: reg, Closing: streams,
		TenantRate: cfg.TenantRate, TenantBurst: cfg.TenantBurst, Models: cfg.Models, DefaultModel: defaultModel(cfg),
	}).Register(e)
	checker.Register(e)
	fctx, stopFleet := context.WithCancel(context.Background())
	closers = append(closers, func() error { stopFleet(); return nil })
	fleet := health.NewFleet(fctx, rdb, insp, health.FleetOptions{
		Threshold: cfg.QueueAlertThreshold, Version: version,
		Breakers: func(ctx context.Context) (map[string]string, error) {
			return llm.BreakerStates(ctx, rdb, llm.ProviderNames(cfg))
		},
	})
	fleet.Register(e)
	reg.MustRegister(fleet.Collector())

	if standalone {
		bctx, stopBreakers := context.WithCancel(context.Background())
		closers = append(closers, func() error { stopBreakers(); return nil })
		w, err := orchestration.NewWorkerFromConfig(bctx, cfg, rdb, st, reg, log.With().Str("component", "worker").Logger())
		if err != nil {
			return err
		}
		if err := w.Start(); err != nil {
			return err
		}
		closers = append(closers, func() error { w.Shutdown(); return nil })
	}

	srv, err := httpserve.Start(cfg.HTTPAddr, e, log)
	if err != nil {
		return err
	}
	select {
	case <-ctx.Done():
	case err := <-srv.Done():
		return err
	}
	log.Info().Msg("shutting down")
	checker.SetShuttingDown()
	endStreams() // clients resume on another API process with Last-Event-ID
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}

// defaultModel is the model jobs get when they name none.
func defaultModel(cfg config.Config) string {
	if cfg.LLMModel != "" {
		return cfg.LLMModel
	}
	return cfg.LLMProvider
}
