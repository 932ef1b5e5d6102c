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

	"github.com/hibiken/asynq"
	"github.com/hibiken/asynqmon"
	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/api"
	"github.com/chatfleet/chatfleet/cmd/internal/wiring"
	"github.com/chatfleet/chatfleet/config"
	"github.com/chatfleet/chatfleet/console"
	"github.com/chatfleet/chatfleet/health"
	"github.com/chatfleet/chatfleet/internal/httpserve"
	"github.com/chatfleet/chatfleet/internal/logging"
	"github.com/chatfleet/chatfleet/internal/redisconn"
	"github.com/chatfleet/chatfleet/internal/tracing"
	"github.com/chatfleet/chatfleet/llm"
	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/stream"
	"github.com/chatfleet/chatfleet/tasks"
	"github.com/chatfleet/chatfleet/webhooks"
)

var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Environ(), os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `usage: api [--standalone] [config check]

  api                 serve the HTTP API against CHATFLEET_REDIS_URL
  api --standalone    serve the API with an in-process worker (and an embedded
                      Redis when CHATFLEET_REDIS_URL is empty): development only
  api config check    validate the configuration and exit
`

func run(ctx context.Context, environ []string, args []string, stdout, stderr io.Writer) int {
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
		return config.Check(role, environ, stdout, stderr)
	case len(rest) > 0:
		fs.Usage()
		return 2
	}
	cfg, err := config.Load(role, config.Getenv(environ))
	if err != nil {
		fmt.Fprintf(stderr, "invalid configuration:\n%s\n", err)
		return 1
	}
	log := logging.New(stderr, cfg.LogLevel, "api").With().Str("version", version).Logger()
	wiring.WarnUnknown(log, environ)
	flush, err := wiring.Tracing(ctx, "chatfleet-api", environ, log)
	if err != nil {
		fmt.Fprintf(stderr, "invalid configuration:\n%s\n", err)
		return 1
	}
	defer flush()
	if err := serve(ctx, cfg, config.Getenv(environ), *standalone, log); err != nil {
		log.Error().Err(err).Msg("api stopped with an error")
		return 1
	}
	return 0
}

// serve runs the API until ctx ends, then shuts down last in, first out:
// not ready, streams ended and drained, HTTP drained, the in-process worker
// (standalone) drained, Redis closed.
func serve(ctx context.Context, cfg config.Config, getenv func(string) string, standalone bool, log zerolog.Logger) (err error) {
	var closers wiring.Closers
	defer func() { err = errors.Join(err, closers.Close()) }()

	if standalone {
		log.Warn().Msg("STANDALONE DEVELOPMENT MODE: API and worker in one process; not for production")
		if cfg.RedisURL == "" {
			url, stopRedis, err := startEmbeddedRedis(log)
			if err != nil {
				return err
			}
			closers.Add(stopRedis)
			cfg.RedisURL = url
		}
	}
	rdb, err := redisconn.Open(cfg.RedisURL, "chatfleet-api", log)
	if err != nil {
		return err
	}
	closers.Add(rdb.Close)
	conns := redisconn.Track(rdb) // before the client's first command

	st := wiring.Store(cfg, rdb)
	list := wiring.NewModelList(cfg, getenv, log)
	jm := wiring.Jobs(cfg, list, rdb, st)
	reg := wiring.Registry()
	checker := health.NewChecker(rdb, version, reg)

	hub := stream.NewHub(rdb, log)
	hub.WakeWith(jm.Wake)
	closers.Add(hub.Close)

	bg, stopBackground := context.WithCancel(context.Background()) // fleet sampling, breaker refresh
	closers.AddFunc(stopBackground)
	if standalone {
		stopWorker, err := wiring.StartWorker(bg, cfg, list, rdb, jm, st, reg, log.With().Str("component", "worker").Logger())
		if err != nil {
			return err
		}
		closers.AddFunc(stopWorker)
	}

	streams, endStreams := context.WithCancel(context.Background())
	defer endStreams()
	e := httpserve.NewEcho(log, reg)
	if tracing.Enabled() {
		e.Use(tracing.Middleware())
	}
	server := api.New(api.Deps{Jobs: jm, Store: st.Reader(), Hub: hub, Redis: rdb, Interrupt: conns.Interrupt}, api.Options{
		APIKeys: cfg.APIKeys, Heartbeat: cfg.SSEHeartbeat, Registerer: reg, Closing: log.WithContext(streams),
		TenantRate: cfg.TenantRate, TenantBurst: cfg.TenantBurst, Models: list.Current, Allowed: cfg.Models,
		StreamMaxDuration: cfg.StreamMaxDuration, TenantMaxStreams: cfg.TenantMaxStreams,
		MaxInflightBytes: cfg.MaxInflightBytes, TenantMaxInflightBytes: cfg.TenantMaxInflightBytes, Retention: cfg.JobRetention,
		MaxConversationBytes: cfg.ResponsesMaxConversationBytes,
		Webhooks:             wiring.Webhooks(cfg),
		BatchWebhooks:        webhooks.NewOutbox(st.Reader(), jm, asynq.NewClientFromRedisClient(rdb), wiring.Webhooks(cfg)).FlushBatch,
		WebhookHTTPSOnly:     cfg.Env == config.EnvProduction && !cfg.WebhookAllowHTTP,
		Prices:               list.Prices,
		FilesMaxBytes:        cfg.FilesMaxBytes, BatchMaxRequests: cfg.BatchMaxRequests, FilesRetention: cfg.FilesRetention,
	})
	server.Register(e)
	go server.RunBatches(log.WithContext(bg), stream.NewRunnerName())
	checker.Register(e)
	console.Register(e)
	if cfg.AdminKey != "" {
		queues, err := queueUI(cfg.RedisURL)
		if err != nil {
			return err
		}
		closers.Add(queues.Close)
		console.RegisterAdmin(e, console.AdminOptions{Key: cfg.AdminKey, Queues: queues, Jobs: jm,
			Webhooks: webhooks.NewAdmin(asynq.NewInspectorFromRedisClient(rdb)), Usage: server.AdminUsage})
	}
	fleet := health.NewFleet(bg, rdb, asynq.NewInspectorFromRedisClient(rdb), health.FleetOptions{
		Threshold: cfg.QueueAlertThreshold, Version: version, Queues: tasks.QueueSet(cfg.QueueSpread),
		Breakers: func(ctx context.Context) (map[string]string, error) {
			return llm.BreakerStates(ctx, rdb, llm.ProviderNames(llm.Specs(list.Current())))
		},
		Saturated: func(ctx context.Context) ([]string, error) {
			return llm.Saturated(ctx, rdb, llm.Specs(list.Current()))
		},
		// Read at each request: the list changes when the models file is edited.
		Deployments: func(ctx context.Context) (any, error) {
			return llm.DeploymentStates(ctx, rdb, llm.Specs(list.Current()), cfg.RateMargin)
		},
		Scheduler: func(ctx context.Context) (store.SchedBacklog, int, error) { return jm.Backlog(ctx, 5) }, // the 5 busiest tenants
	})
	list.Watch(bg) // every part that follows the list has registered
	fleet.Register(e)
	reg.MustRegister(fleet.Collector())

	srv, err := httpserve.Start(cfg.HTTPAddr, e, log)
	if err != nil {
		return err
	}
	closers.Add(wiring.WithTimeout(cfg.ShutdownTimeout, func(ctx context.Context) error {
		// Streams end first: their clients resume on another API process
		// with Last-Event-ID. Then requests in flight drain.
		endStreams()
		return errors.Join(server.Drain(ctx), srv.Shutdown(ctx))
	}))
	closers.AddFunc(checker.SetShuttingDown)

	select {
	case <-ctx.Done():
		log.Info().Dur("timeout", cfg.ShutdownTimeout).Msg("shutting down")
		return nil
	case err := <-srv.Done():
		return err
	}
}

// queueUI is asynqmon, read-only: changes to jobs go through the console's
// dead-letter view or `worker jobs`, which keep the job records in step.
func queueUI(redisURL string) (*asynqmon.HTTPHandler, error) {
	opt, err := redisconn.ConnOpt(redisURL)
	if err != nil {
		return nil, fmt.Errorf("queue UI: %w", err)
	}
	return asynqmon.New(asynqmon.Options{RootPath: "/admin/queues", RedisConnOpt: opt, ReadOnly: true}), nil
}
