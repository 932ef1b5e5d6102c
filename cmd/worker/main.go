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

	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/cmd/internal/wiring"
	"github.com/chatfleet/chatfleet/config"
	"github.com/chatfleet/chatfleet/health"
	"github.com/chatfleet/chatfleet/internal/httpserve"
	"github.com/chatfleet/chatfleet/internal/logging"
	"github.com/chatfleet/chatfleet/internal/redisconn"
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
	code := run(ctx, os.Environ(), os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, environ []string, args []string, stdout, stderr io.Writer) int {
	switch {
	case len(args) == 2 && args[0] == "config" && args[1] == "check":
		return config.Check(config.RoleWorker, environ, stdout, stderr)
	case len(args) >= 2 && args[0] == "jobs":
		return jobsCommand(ctx, environ, args[1:], stdout, stderr)
	case len(args) > 0:
		fmt.Fprint(stderr, usage)
		return 2
	}
	cfg, err := config.Load(config.RoleWorker, config.Getenv(environ))
	if err != nil {
		fmt.Fprintf(stderr, "invalid configuration:\n%s\n", err)
		return 1
	}
	log := logging.New(stderr, cfg.LogLevel, "worker").With().Str("version", version).Logger()
	wiring.WarnUnknown(log, environ)
	flush, err := wiring.Tracing(ctx, "chatfleet-worker", environ, log)
	if err != nil {
		fmt.Fprintf(stderr, "invalid configuration:\n%s\n", err)
		return 1
	}
	defer flush()
	if err := serve(ctx, cfg, config.Getenv(environ), log); err != nil {
		log.Error().Err(err).Msg("worker stopped with an error")
		return 1
	}
	return 0
}

// serve runs jobs until ctx ends, then shuts down last in, first out: not
// ready, stop fetching and drain in-flight jobs (up to the shutdown timeout,
// then hand them back), the health server, Redis.
func serve(ctx context.Context, cfg config.Config, getenv func(string) string, log zerolog.Logger) (err error) {
	var closers wiring.Closers
	defer func() { err = errors.Join(err, closers.Close()) }()

	rdb, err := redisconn.Open(cfg.RedisURL, "chatfleet-worker", log)
	if err != nil {
		return err
	}
	closers.Add(rdb.Close)

	st := wiring.Store(cfg, rdb)
	reg := wiring.Registry()
	checker := health.NewChecker(rdb, version, reg)
	e := httpserve.NewEcho(log, reg)
	checker.Register(e)
	srv, err := httpserve.Start(cfg.HTTPAddr, e, log)
	if err != nil {
		return err
	}
	closers.Add(wiring.WithTimeout(cfg.ShutdownTimeout, srv.Shutdown))

	bg, stopBackground := context.WithCancel(context.Background()) // breaker refresh
	closers.AddFunc(stopBackground)
	list := wiring.NewModelList(cfg, getenv, log)
	stopWorker, err := wiring.StartWorker(bg, cfg, list, rdb, wiring.Jobs(cfg, list, rdb, st), st, reg, log)
	if err != nil {
		return err
	}
	list.Watch(bg) // the worker's router follows the list from here on
	closers.AddFunc(stopWorker)
	closers.AddFunc(checker.SetShuttingDown)
	log.Info().Int("concurrency", cfg.WorkerConcurrency).Dur("poll_interval", cfg.QueuePollInterval).Msg("worker started")

	select {
	case <-ctx.Done():
		log.Info().Dur("timeout", cfg.ShutdownTimeout).Msg("shutting down: draining in-flight jobs")
		return nil
	case err := <-srv.Done():
		return err
	}
}

// jobsCommand lists and re-runs archived (dead-lettered) jobs.
func jobsCommand(ctx context.Context, environ []string, args []string, stdout, stderr io.Writer) int {
	cfg, err := config.Load(config.RoleWorker, config.Getenv(environ))
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
	jm := wiring.Jobs(cfg, wiring.NewModelList(cfg, config.Getenv(environ), zerolog.Nop()), rdb, wiring.Store(cfg, rdb))
	switch {
	case args[0] == "archived" && len(args) == 1:
		list, err := jm.ListArchived()
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
		code := 0
		for _, id := range args[1:] {
			if err := jm.Rerun(ctx, id); err != nil {
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
