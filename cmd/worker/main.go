// Command worker pulls chat jobs from the queue and runs them through the LLM
// pipeline. Run any number of them against one Redis. It serves /health/live,
// /health/ready and /metrics on CHATFLEET_HTTP_ADDR.
package main

import (
	"context"
	"encoding/json"
	"errors"
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
	"github.com/chatfleet/chatfleet/orchestration"
	"github.com/chatfleet/chatfleet/store"
)

var version = "dev"

const usage = `usage: worker [config check | jobs archived | jobs rerun JOB_ID...]

  worker                   run jobs from CHATFLEET_REDIS_URL
  worker config check      validate the configuration and exit
  worker jobs archived     list the jobs asynq gave up on, newest first (JSON lines)
  worker jobs rerun ID...  run archived jobs again from their first attempt
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Getenv, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, getenv func(string) string, args []string, stdout, stderr io.Writer) int {
	switch {
	case len(args) == 2 && args[0] == "config" && args[1] == "check":
		return config.Check(config.RoleWorker, getenv, stdout, stderr)
	case len(args) >= 2 && args[0] == "jobs":
		return jobsCommand(ctx, getenv, args[1:], stdout, stderr)
	case len(args) > 0:
		fmt.Fprint(stderr, usage)
		return 2
	}
	cfg, err := config.Load(config.RoleWorker, getenv)
	if err != nil {
		fmt.Fprintf(stderr, "invalid configuration:\n%s\n", err)
		return 1
	}
	log := logging.New(stderr, cfg.LogLevel, "worker").With().Str("version", version).Logger()
	if err := serve(ctx, cfg, log); err != nil {
		log.Error().Err(err).Msg("worker stopped with an error")
		return 1
	}
	return 0
}

func serve(ctx context.Context, cfg config.Config, log zerolog.Logger) (err error) {
	rdb, err := redisconn.Open(cfg.RedisURL, "chatfleet-worker", log)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, rdb.Close()) }()

	st := store.New(rdb, asynq.NewInspectorFromRedisClient(rdb), store.OptionsFrom(cfg))
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	checker := health.NewChecker(rdb, version, reg)
	e := api.NewEcho(log, reg)
	checker.Register(e)
	srv, err := httpserve.Start(cfg.HTTPAddr, e, log)
	if err != nil {
		return err
	}

	bctx, stopBreakers := context.WithCancel(context.Background())
	defer stopBreakers()
	w, err := orchestration.NewWorkerFromConfig(bctx, cfg, rdb, st, reg, log)
	if err != nil {
		return errors.Join(err, srv.Shutdown(context.Background()))
	}
	if err := w.Start(); err != nil {
		return errors.Join(err, srv.Shutdown(context.Background()))
	}
	log.Info().Int("concurrency", cfg.WorkerConcurrency).Dur("poll_interval", cfg.QueuePollInterval).Msg("worker started")

	select {
	case <-ctx.Done():
	case err = <-srv.Done():
	}
	// Last in, first out: not ready, stop and drain jobs, then the HTTP server.
	log.Info().Dur("timeout", cfg.ShutdownTimeout).Msg("shutting down: draining in-flight jobs")
	checker.SetShuttingDown()
	w.Shutdown()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return errors.Join(err, srv.Shutdown(sctx))
}

// jobsCommand lists and re-runs archived (dead-lettered) jobs.
func jobsCommand(ctx context.Context, getenv func(string) string, args []string, stdout, stderr io.Writer) int {
	cfg, err := config.Load(config.RoleWorker, getenv)
	if err != nil {
		fmt.Fprintf(stderr, "invalid configuration:\n%s\n", err)
		return 1
	}
	rdb, err := redisconn.Open(cfg.RedisURL, "chatfleet-admin", zerolog.Nop())
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	defer rdb.Close()
	insp := asynq.NewInspectorFromRedisClient(rdb)
	switch {
	case args[0] == "archived" && len(args) == 1:
		list, err := orchestration.ListArchived(insp)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		enc := json.NewEncoder(stdout)
		for _, a := range list {
			_ = enc.Encode(a)
		}
		return 0
	case args[0] == "rerun" && len(args) > 1:
		st := store.New(rdb, insp, store.OptionsFrom(cfg))
		queue := asynq.NewClientFromRedisClient(rdb)
		code := 0
		for _, id := range args[1:] {
			if err := orchestration.Rerun(ctx, st, insp, queue, id); err != nil {
				fmt.Fprintln(stderr, err)
				code = 1
				continue
			}
			fmt.Fprintf(stdout, "%s queued again\n", id)
		}
		return code
	}
	fmt.Fprint(stderr, usage)
	return 2
}
