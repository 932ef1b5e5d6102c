package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/jobs"
	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/tasks"
)

// Running batches. Every API process takes part: each round it claims the
// active batches no other process holds and steps each one it holds. A step
// records the answers of its lines whose jobs ended (once per line:
// store.RecordLine), turns more lines into jobs while fewer than
// batchRunning of them run, and ends the batch once nothing runs and
// nothing is left to start. A line's job has an id derived from the batch
// and the line (an idempotent submit), so a process that dies between
// submitting a line and recording it leaves the next one the same job, not
// a second.

const (
	batchTick    = 200 * time.Millisecond
	batchClaim   = 10 * time.Second // a runner that stops renewing loses its batches after this
	batchRunning = 256              // a batch's lines that are jobs at once: the scheduler holds the rest of the fleet's share
)

// RunBatches runs the fleet's active batches until ctx ends; runner names
// this process (unique).
func (s *Server) RunBatches(ctx context.Context, runner string) {
	inputs := map[string][]batchLine{} // the lines of the batches this process holds
	t := time.NewTicker(batchTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		active, err := s.store.ActiveBatches(ctx)
		if err != nil {
			continue
		}
		for _, tb := range active {
			tenant, id := tb[0], tb[1]
			if ok, err := s.jobs.ClaimBatch(ctx, id, runner, batchClaim); err != nil || !ok {
				delete(inputs, id)
				continue
			}
			log := zerolog.Ctx(ctx).With().Str("batch_id", id).Str("tenant", tenant).Logger()
			if err := s.stepBatch(log.WithContext(ctx), tenant, id, inputs); err != nil && ctx.Err() == nil {
				log.Warn().Err(err).Msg("could not step the batch; the next round tries again")
			}
		}
	}
}

// stepBatch collects, feeds and, when it is done, ends one batch.
func (s *Server) stepBatch(ctx context.Context, tenant, id string, inputs map[string][]batchLine) error {
	b, err := s.store.GetBatch(ctx, tenant, id)
	if errors.Is(err, store.ErrBatchNotFound) {
		delete(inputs, id)
		return s.jobs.DropActive(ctx, tenant, id)
	}
	if err != nil {
		return err
	}
	if store.BatchEnded(b.Status) { // its webhooks go out before it leaves the active set, its outbox
		delete(inputs, id)
		if s.opt.BatchWebhooks != nil {
			if err := s.opt.BatchWebhooks(ctx, b); err != nil {
				return err
			}
		}
		return s.jobs.DropActive(ctx, tenant, id)
	}
	lines, ok := inputs[id]
	if !ok {
		content, err := s.store.FileContent(ctx, tenant, b.InputFileID)
		if errors.Is(err, store.ErrFileNotFound) {
			content = nil // deleted since: its lines not yet started fail
		} else if err != nil {
			return err
		}
		lines, _ = s.parseBatchInput(content, b.Endpoint, false)
		inputs[id] = lines
	}
	running, err := s.store.BatchRunningLines(ctx, tenant, id)
	if err != nil {
		return err
	}
	if err := s.collectLines(ctx, b, lines, running); err != nil {
		return err
	}
	now := time.Now()
	expired := now.After(b.ExpiresAt)
	switch {
	case b.Status == store.BatchCancelling:
		for _, jobID := range running {
			if j, err := s.store.Get(ctx, jobID); err == nil && !store.Terminal(j.Status) {
				if _, err := s.jobs.Cancel(ctx, j, "the batch was cancelled"); err != nil && !errors.Is(err, jobs.ErrFinished) {
					return err
				}
			}
		}
	case expired:
		if err := s.expireQueued(ctx, b, lines, running); err != nil {
			return err
		}
		if err := s.expireLines(ctx, &b, lines); err != nil {
			return err
		}
	default:
		if err := s.feedLines(ctx, &b, lines, running); err != nil {
			return err
		}
	}
	if len(running) > 0 || (b.Status == store.BatchInProgress && b.Next < b.Total) {
		return nil
	}
	return s.endBatch(ctx, b, expired) // the next round sends its webhooks
}

// lineKey is the Idempotency-Key of a batch line's job.
func lineKey(batchID string, n int) string { return "batch:" + batchID + ":" + strconv.Itoa(n) }

// lineOutput is a line of a batch's output or error file.
func lineOutput(l batchLine, jobID string, response, failure any) string {
	id := "batch_req_" + strings.TrimPrefix(jobID, "job_")
	out, _ := json.Marshal(map[string]any{"id": id, "custom_id": l.CustomID, "response": response, "error": failure})
	return string(out)
}

// Answered lines are kept with a mark of the file they go to.
const (
	toOutput = "o"
	toErrors = "e"
)

// runningStatuses reads the statuses of the running lines' jobs (one
// pipeline): line numbers, job ids and statuses, in the same order.
func (s *Server) runningStatuses(ctx context.Context, running map[int]string) ([]int, []string, []string, error) {
	nums := make([]int, 0, len(running))
	ids := make([]string, 0, len(running))
	for n, jobID := range running {
		nums, ids = append(nums, n), append(ids, jobID)
	}
	sts, err := s.store.Statuses(ctx, ids)
	return nums, ids, sts, err
}

// collectLines records the answers of the running lines whose jobs ended.
func (s *Server) collectLines(ctx context.Context, b store.Batch, lines []batchLine, running map[int]string) error {
	if len(running) == 0 {
		return nil
	}
	nums, ids, sts, err := s.runningStatuses(ctx, running)
	if err != nil {
		return err
	}
	// An answered line's job goes: its output line holds the answer. A
	// failed line's stays for the retention, to be looked into.
	answered := map[string]string{}
	defer func() {
		if err := s.jobs.DropLines(ctx, b.Tenant, answered); err != nil {
			zerolog.Ctx(ctx).Warn().Err(err).Msg("could not remove answered lines' jobs; they expire with the job retention")
		}
	}()
	for i, st := range sts {
		n, jobID := nums[i], ids[i]
		if st != "" && !store.Terminal(st) {
			continue
		}
		if n >= len(lines) {
			delete(running, n)
			continue
		}
		var ok bool
		var out string
		j, err := s.store.Get(ctx, jobID)
		switch {
		case errors.Is(err, store.ErrNotFound):
			out = toErrors + lineOutput(lines[n], jobID, nil, map[string]any{"code": "lost", "message": "the request's job expired before its answer was collected"})
		case err != nil:
			return err
		case j.Status == store.StatusSucceeded:
			body := s.lineAnswer(b.Endpoint, lines[n].Body, j)
			ok, out = true, toOutput+lineOutput(lines[n], jobID, map[string]any{"status_code": 200, "request_id": jobID, "body": body}, nil)
		default:
			e := store.JobError{Code: j.Status, Message: "the request did not complete"}
			if j.Error != nil {
				e = *j.Error
			}
			if e.Code == "provider_rejected" {
				body := map[string]any{"error": map[string]any{"message": e.Message, "type": "invalid_request_error", "param": nil, "code": e.Code}}
				out = toErrors + lineOutput(lines[n], jobID, map[string]any{"status_code": 400, "request_id": jobID, "body": body}, nil)
			} else {
				out = toErrors + lineOutput(lines[n], jobID, nil, map[string]any{"code": e.Code, "message": e.Message})
			}
		}
		if _, err := s.jobs.RecordLine(ctx, b.Tenant, b.ID, n, ok, out, s.batchKeep()); err != nil {
			return err
		}
		delete(running, n)
		if ok {
			answered[jobID] = tasks.IdempotencyKeyHash(b.Tenant, lineKey(b.ID, n))
		}
	}
	return nil
}

// feedLines turns the batch's next lines into jobs while fewer than
// batchRunning run.
func (s *Server) feedLines(ctx context.Context, b *store.Batch, lines []batchLine, running map[int]string) error {
	for len(running) < batchRunning && b.Next < b.Total {
		n := b.Next
		if n >= len(lines) { // its input file is gone
			if err := s.failLine(ctx, b, batchLine{CustomID: ""}, n, "file_not_found", "the batch's input file was deleted before the line ran"); err != nil {
				return err
			}
			continue
		}
		key := lineKey(b.ID, n)
		session := "batch-" + strings.TrimPrefix(b.ID, "batch_") + "-" + strconv.Itoa(n)
		nj := store.NewJob{ID: tasks.IdempotentJobID(b.Tenant, key, session), KeyHash: tasks.IdempotencyKeyHash(b.Tenant, key),
			Tenant: b.Tenant, SessionID: session, Queue: tasks.QueueName(tasks.PriorityLow), CreatedAt: time.Now().UTC(), Batch: b.ID}
		p, err := s.lineJob(b.Endpoint, lines[n].Body, nj) // a models file edit may refuse it now
		var ae *Error
		if errors.As(err, &ae) {
			if err := s.failLine(ctx, b, lines[n], n, ae.Code, ae.Message); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		sub, err := s.jobs.Submit(ctx, nj, p)
		var spent *jobs.BudgetError
		switch {
		case errors.As(err, &spent):
			if err := s.failLine(ctx, b, lines[n], n, "insufficient_quota", spent.Error()); err != nil {
				return err
			}
			continue
		case errors.Is(err, store.ErrTooManyJobs):
			return nil // the tenant's unfinished jobs are at its limit: the next round tries again
		case err != nil:
			return err
		}
		if err := s.jobs.FedLine(ctx, b.Tenant, b.ID, n, sub.Job.ID, s.batchKeep()); err != nil {
			return err
		}
		running[n] = sub.Job.ID
		b.Next++
	}
	return nil
}

// failLine answers a line that could not become a job with an error.
func (s *Server) failLine(ctx context.Context, b *store.Batch, l batchLine, n int, code, msg string) error {
	out := toErrors + lineOutput(l, "job_"+strings.TrimPrefix(b.ID, "batch_")+"_"+strconv.Itoa(n), nil, map[string]any{"code": code, "message": msg})
	if _, err := s.jobs.RecordLine(ctx, b.Tenant, b.ID, n, false, out, s.batchKeep()); err != nil {
		return err
	}
	if err := s.jobs.SetBatchNext(ctx, b.Tenant, b.ID, n+1); err != nil {
		return err
	}
	b.Next = n + 1
	return nil
}

// The error of a line not started within the window (OpenAI's).
const (
	expiredCode    = "batch_expired"
	expiredMessage = "This request could not be executed before the completion window expired."
)

// expireQueued cancels the batch's lines whose jobs are still queued at the
// end of its window and answers them as expired; the started ones finish.
func (s *Server) expireQueued(ctx context.Context, b store.Batch, lines []batchLine, running map[int]string) error {
	nums, ids, sts, err := s.runningStatuses(ctx, running)
	if err != nil {
		return err
	}
	for i, st := range sts {
		if st != store.StatusQueued || nums[i] >= len(lines) {
			continue
		}
		j, err := s.store.Get(ctx, ids[i])
		if err != nil {
			return err
		}
		if _, err := s.jobs.Cancel(ctx, j, "the batch's completion window expired"); errors.Is(err, jobs.ErrFinished) {
			continue // it ended meanwhile: collected next round
		} else if err != nil {
			return err
		}
		out := toErrors + lineOutput(lines[nums[i]], ids[i], nil, map[string]any{"code": expiredCode, "message": expiredMessage})
		if _, err := s.jobs.RecordLine(ctx, b.Tenant, b.ID, nums[i], false, out, s.batchKeep()); err != nil {
			return err
		}
		delete(running, nums[i])
	}
	return nil
}

// expireLines answers the lines not made jobs by the end of the window.
func (s *Server) expireLines(ctx context.Context, b *store.Batch, lines []batchLine) error {
	for b.Next < b.Total {
		l := batchLine{}
		if b.Next < len(lines) {
			l = lines[b.Next]
		}
		if err := s.failLine(ctx, b, l, b.Next, expiredCode, expiredMessage); err != nil {
			return err
		}
	}
	return nil
}

// endBatch writes the output and error files of a batch with nothing left to
// run, and ends it: completed, expired or cancelled.
func (s *Server) endBatch(ctx context.Context, b store.Batch, expired bool) error {
	now := time.Now()
	to := store.BatchCompleted
	switch {
	case b.Status == store.BatchCancelling:
		to = store.BatchCancelled
	case expired:
		to = store.BatchExpired
	}
	if b.Status == store.BatchInProgress {
		if _, err := s.jobs.MoveBatch(ctx, b.Tenant, b.ID, []string{store.BatchInProgress}, store.BatchFinalizing, now); err != nil {
			return err
		}
	}
	results, err := s.store.BatchResultLines(ctx, b.Tenant, b.ID)
	if err != nil {
		return err
	}
	nums := make([]int, 0, len(results))
	for n := range results {
		nums = append(nums, n)
	}
	sort.Ints(nums)
	var out, errs bytes.Buffer
	for _, n := range nums {
		r := results[n]
		buf := &errs
		if strings.HasPrefix(r, toOutput) {
			buf = &out
		}
		buf.WriteString(r[1:])
		buf.WriteByte('\n')
	}
	var set []string
	for _, f := range []struct {
		field, name string
		content     []byte
	}{{"output_file_id", "output", out.Bytes()}, {"error_file_id", "error", errs.Bytes()}} {
		if len(f.content) == 0 {
			continue
		}
		file := store.File{ID: newObjectID("file-"), Tenant: b.Tenant, Filename: b.ID + "_" + f.name + ".jsonl", Purpose: "batch_output",
			Bytes: int64(len(f.content)), CreatedAt: now, ExpiresAt: now.Add(s.opt.FilesRetention)}
		if err := s.jobs.SaveFile(ctx, file, f.content); err != nil {
			return err
		}
		set = append(set, f.field, file.ID)
	}
	moved, err := s.jobs.MoveBatch(ctx, b.Tenant, b.ID, []string{store.BatchFinalizing, store.BatchCancelling}, to, now, set...)
	if err != nil || !moved {
		return err
	}
	return s.jobs.DropBatchLines(ctx, b.Tenant, b.ID)
}
