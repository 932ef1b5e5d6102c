package webhooks

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"

	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/tasks"
)

// maxResult caps the result an include_result endpoint gets in job.* events;
// a larger one is left out (result_omitted) and fetched with the key.
const maxResult = 64 << 10

// eventType is the event a job's end makes for its spec's kind ("" for a job
// that has not ended).
func eventType(kind, status string) string {
	resp := kind == KindResponse
	switch status {
	case store.StatusSucceeded:
		if resp {
			return tasks.EventResponseCompleted
		}
		return tasks.EventJobSucceeded
	case store.StatusFailed:
		if resp {
			return tasks.EventResponseFailed
		}
		return tasks.EventJobFailed
	case store.StatusCanceled:
		if resp {
			return tasks.EventResponseCancelled
		}
		return tasks.EventJobCanceled
	}
	return ""
}

// eventID names one end of one job: the same for every delivery and retry of
// it, another when an operator re-runs the job and it ends again.
func eventID(j store.Job) string {
	sum := sha256.Sum256([]byte(j.ID + "\n" + j.FinishedAt.UTC().Format("2006-01-02T15:04:05.000000000Z")))
	return "evt_" + hex.EncodeToString(sum[:12])
}

// target names a delivery (one receiver of one event) on the job's record.
func target(url string) string {
	sum := sha256.Sum256([]byte(url))
	return "wh_" + hex.EncodeToString(sum[:6])
}

// envelope is OpenAI's webhook event.
type envelope struct {
	ID        string `json:"id"`
	Object    string `json:"object"`
	Type      string `json:"type"`
	CreatedAt int64  `json:"created_at"`
	Data      any    `json:"data"`
}

// jobData is a job.* event's data.
type jobData struct {
	ID            string          `json:"id"`
	SessionID     string          `json:"session_id"`
	Status        string          `json:"status"`
	Error         *store.JobError `json:"error,omitempty"`
	Result        *store.Result   `json:"result,omitempty"`
	Usage         *store.Usage    `json:"usage,omitempty"`
	ResultOmitted bool            `json:"result_omitted,omitempty"`
}

// body renders a job's event for one endpoint.
func body(j store.Job, sp Spec, typ string, includeResult bool) ([]byte, error) {
	ev := envelope{ID: eventID(j), Object: "event", Type: typ, CreatedAt: j.FinishedAt.Unix()}
	if sp.Kind == KindResponse {
		ev.Data = map[string]string{"id": sp.ObjectID}
	} else {
		d := jobData{ID: j.ID, SessionID: j.SessionID, Status: j.Status, Error: j.Error}
		if includeResult && j.Result != nil {
			if b, _ := json.Marshal(j.Result); len(b) <= maxResult {
				d.Result, d.Usage = j.Result, j.Usage
			} else {
				d.ResultOmitted = true
			}
		}
		ev.Data = d
	}
	b, err := json.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("encode webhook event: %w", err)
	}
	return b, nil
}
