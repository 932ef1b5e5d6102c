// Command thinapi is the submit baseline of `make bench`: the thinnest echo
// API that does a submit's job (decode and validate the JSON, enqueue an
// asynq task with a task id, answer 202) and nothing else: no job record,
// session order, idempotency, auth, rate limit, metrics or request log.
// It listens on a free loopback port, prints it as chatfleet's processes do,
// and uses the Redis at THINAPI_REDIS_ADDR.
package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/hibiken/asynq"
	"github.com/labstack/echo/v4"
	"github.com/redis/go-redis/v9"
)

type request struct {
	SessionID string `json:"session_id"`
	Message   string `json:"message"`
}

func main() {
	rdb := redis.NewClient(&redis.Options{Addr: os.Getenv("THINAPI_REDIS_ADDR")})
	q := asynq.NewClientFromRedisClient(rdb)
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.POST("/api/v1/chat/jobs", func(c echo.Context) error {
		var req request
		if err := json.NewDecoder(c.Request().Body).Decode(&req); err != nil {
			return c.JSON(http.StatusBadRequest, map[string]string{"error": "malformed JSON: " + err.Error()})
		}
		if req.SessionID == "" || req.Message == "" {
			return c.JSON(http.StatusUnprocessableEntity, map[string]string{"error": "session_id and message are required"})
		}
		var b [16]byte
		_, _ = rand.Read(b[:])
		id := "job_" + hex.EncodeToString(b[:])
		payload, _ := json.Marshal(map[string]any{"v": 1, "job_id": id, "session_id": req.SessionID, "message": req.Message})
		_, err := q.EnqueueContext(c.Request().Context(), asynq.NewTask("chat:complete", payload,
			asynq.TaskID(id), asynq.Queue("chatfleet-normal"), asynq.MaxRetry(4), asynq.Retention(24*time.Hour)))
		if err != nil {
			return c.JSON(http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
		}
		return c.JSON(http.StatusAccepted, map[string]string{"job_id": id, "status": "queued"})
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "{\"message\":\"http server listening\",\"addr\":%q}\n", ln.Addr().String())
	e.Listener = ln
	if err := e.Start(""); err != nil && err != http.ErrServerClosed {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
