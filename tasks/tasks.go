// Package tasks is the wire contract between the API and the workers: task type
// names, the versioned JSON payload, queue names and job id derivation.
// It imports only the standard library, asynq and rkeys (a job id names its
// key bucket).
package tasks

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hibiken/asynq"

	"github.com/chatfleet/chatfleet/internal/rkeys"
)

// TypeChatComplete is the task type of a chat job. Never rename it once shipped:
// queued tasks carry it.
const TypeChatComplete = "chat:complete"

// PayloadVersion is the newest payload version this build writes. Version 2
// added tools, tool calls and results, content parts, response formats and
// more generation parameters; version 3 the trace context; version 4 the
// Responses chain by reference (Chain); version 5 the body by reference
// (Body). Each payload is written at the lowest version that holds its
// fields (one without a chain as version 3, one without a trace context
// either as version 2), so that workers of the
// releases before run what they can; they refuse a newer version as a bad
// payload instead of running it without its chain. Every earlier version is
// read as it is (its fields mean the same), so tasks queued before an
// upgrade still run.
const PayloadVersion = 5

// Priorities and the queues they map to. Weights give high 6, normal 3, low 1
// shares of worker pickups while all three have work.
const (
	PriorityHigh   = "high"
	PriorityNormal = "normal"
	PriorityLow    = "low"
)

// weights are the priorities' asynq weights.
var weights = map[string]int{PriorityHigh: 6, PriorityNormal: 3, PriorityLow: 1}

// Priorities are the priority lanes, highest first.
var Priorities = []string{PriorityHigh, PriorityNormal, PriorityLow}

// PriorityWeight is a priority lane's share while several lanes have work.
func PriorityWeight(priority string) int { return weights[priority] }

// PriorityOfQueue is the priority whose queue (spread or not) this is;
// normal for a queue of no priority.
func PriorityOfQueue(queue string) string {
	for _, p := range Priorities {
		q := QueueName(p)
		if queue == q || strings.HasPrefix(queue, q+"-") {
			return p
		}
	}
	return PriorityNormal
}

// Queues maps queue names to their asynq weights (no spread).
var Queues = QueueSet(1)

// QueueName returns the asynq queue of a priority.
func QueueName(priority string) string { return "chatfleet-" + priority }

// asynq keeps all of a queue's keys in one Redis Cluster slot, so a queue's
// master does asynq's work for every job of that queue. Spreading each
// priority over several queues spreads that work: the job's bucket picks one.
// Spread over s queues, the k-th is named (chatfleet-normal-<n>) so that its
// slot lies in the middle of the k-th of s equal parts of the slot space: on
// s masters with even slot ranges, one per master.

// SpreadQueue returns the queue of a job of a priority's queue when each
// priority is spread over `spread` queues.
func SpreadQueue(queue, jobID string, spread int) string {
	if spread <= 1 {
		return queue
	}
	return spreadNames(queue, spread)[rkeys.Bucket(jobID)%spread]
}

// QueueSet maps every queue to its weight when each priority is spread over
// `spread` queues.
func QueueSet(spread int) map[string]int {
	out := map[string]int{}
	for p, w := range weights {
		for _, q := range spreadNames(QueueName(p), max(spread, 1)) {
			out[q] = w
		}
	}
	return out
}

// spreadCache keeps spreadNames' results: the search runs once per queue and
// spread, not at every submit.
var spreadCache sync.Map // queue + "/" + spread -> []string

func spreadNames(queue string, spread int) []string {
	if spread <= 1 {
		return []string{queue}
	}
	key := queue + "/" + strconv.Itoa(spread)
	if v, ok := spreadCache.Load(key); ok {
		return v.([]string)
	}
	var names []string
	width := 16384 / spread
	for k := range spread {
		for n := 0; ; n++ {
			name := queue + "-" + strconv.Itoa(n)
			if s := rkeys.Slot(name); s >= k*width+width/4 && s < k*width+3*width/4 {
				names = append(names, name)
				break
			}
		}
	}
	spreadCache.Store(key, names)
	return names
}

// ValidPriority reports whether p is a known priority.
func ValidPriority(p string) bool {
	return p == PriorityHigh || p == PriorityNormal || p == PriorityLow
}

// ChatPayload is the payload of a chat:complete task.
type ChatPayload struct {
	Version     int             `json:"v"`
	JobID       string          `json:"job_id"`
	Tenant      string          `json:"tenant"`
	SessionID   string          `json:"session_id"`
	Message     string          `json:"message,omitempty"`
	Model       string          `json:"model,omitempty"`
	Priority    string          `json:"priority"`
	Metadata    json.RawMessage `json:"metadata,omitempty"`
	SubmittedAt time.Time       `json:"submitted_at"`
	// Messages is a whole conversation sent with the job (the OpenAI-compatible
	// front doors). When set it is the prompt, and the session's history is
	// neither read nor written.
	Messages []ChatMessage `json:"messages,omitempty"`
	// ToolResults answer the tool calls of the session's previous turn (jobs
	// API); they go into the prompt and the history before Message.
	ToolResults []ChatMessage `json:"tool_results,omitempty"`
	Params      *GenParams    `json:"params,omitempty"`
	// Trace is the submitter's W3C trace context (traceparent, tracestate,
	// baggage): every attempt's spans join that trace.
	Trace map[string]string `json:"trace,omitempty"`
	// Chain is the stored Responses chain that Messages continue: the
	// worker reads its inputs and answers when the job runs, so the task
	// carries the reference, not the conversation.
	Chain *ChainRef `json:"chain,omitempty"`
	// Body says the job's body (Message, Messages, ToolResults, Params and
	// Metadata) is in its record, not in the task: a large request (tool
	// schemas, images) is kept in Redis once, and goes to the worker once,
	// when its attempt starts (WithBody).
	Body bool `json:"body,omitempty"`
}

// BodyByReference is the payload size from which a task carries its job's
// body by reference (ChatPayload.Body): below it, the task carries it all
// and the worker needs no read of the record to start.
const BodyByReference = 64 << 10

// Lean is the payload without its body, for a task that carries the body
// by reference.
func (p ChatPayload) Lean() ChatPayload {
	p.Message, p.Messages, p.ToolResults, p.Params, p.Metadata = "", nil, nil, nil, nil
	p.Body = true
	return p
}

// WithBody is a lean payload with the body of full, the payload its job
// was submitted with: the lean one's other fields stand (a re-run's
// submitted_at, its trace).
func (p ChatPayload) WithBody(full ChatPayload) ChatPayload {
	p.Message, p.Messages, p.ToolResults, p.Params, p.Metadata = full.Message, full.Messages, full.ToolResults, full.Params, full.Metadata
	p.Body = false
	return p
}

// ChainRef names a Responses chain by its newest response. The prompt is
// the instructions (a system message), then the chain's inputs and answers
// oldest first, then the payload's Messages.
type ChainRef struct {
	Previous     string `json:"previous_response_id"`
	Instructions string `json:"instructions,omitempty"`
}

// ChatMessage is one message of a conversation sent with a job.
type ChatMessage struct {
	Role    string `json:"role"` // system, user, assistant or tool
	Content string `json:"content"`
	// Parts is the content when it holds more than text (images), in order;
	// Content is then its text alone.
	Parts      []ContentPart `json:"parts,omitempty"`
	ToolCalls  []ToolCall    `json:"tool_calls,omitempty"`   // an assistant's calls
	ToolCallID string        `json:"tool_call_id,omitempty"` // a tool message's call
}

// ContentPart is a piece of a message's content: text or an image.
type ContentPart struct {
	Type     string `json:"type"` // text or image_url
	Text     string `json:"text,omitempty"`
	ImageURL string `json:"image_url,omitempty"` // https: or data: URL
	Detail   string `json:"detail,omitempty"`    // auto, low or high
}

// Data returns the media type and base64 data of an image given as a
// data URL (ok false for an https URL).
func (p ContentPart) Data() (media, data string, ok bool) {
	rest, found := strings.CutPrefix(p.ImageURL, "data:")
	if !found {
		return "", "", false
	}
	head, data, found := strings.Cut(rest, ",")
	media, isBase64 := strings.CutSuffix(head, ";base64")
	return media, data, found && isBase64 && media != ""
}

// ToolCall is a model's call of a function tool, in OpenAI's shape.
type ToolCall struct {
	ID       string       `json:"id"`
	Type     string       `json:"type"` // function
	Function FunctionCall `json:"function"`
}

// FunctionCall names the function called and its JSON arguments.
type FunctionCall struct {
	Name      string `json:"name"`
	Arguments string `json:"arguments"`
}

// Tool is a function the model may call, in OpenAI's shape.
type Tool struct {
	Type     string      `json:"type"` // function
	Function FunctionDef `json:"function"`
}

// FunctionDef describes a function tool; Parameters is its JSON Schema as sent.
type FunctionDef struct {
	Name        string          `json:"name"`
	Description string          `json:"description,omitempty"`
	Parameters  json.RawMessage `json:"parameters,omitempty"`
	Strict      *bool           `json:"strict,omitempty"`
}

// ToolChoice says whether and which tool the model must call.
type ToolChoice struct {
	Mode string `json:"mode"`           // auto, none, required or function
	Name string `json:"name,omitempty"` // the function, with mode function
}

// ResponseFormat asks for JSON output, in OpenAI's Chat Completions shape.
type ResponseFormat struct {
	Type       string      `json:"type"` // text, json_object or json_schema
	JSONSchema *JSONSchema `json:"json_schema,omitempty"`
}

// JSONSchema is a json_schema response format; Schema is kept as sent.
type JSONSchema struct {
	Name        string          `json:"name"`
	Description string          `json:"description,omitempty"`
	Schema      json.RawMessage `json:"schema,omitempty"`
	Strict      *bool           `json:"strict,omitempty"`
}

// GenParams are generation settings passed to the provider; zero values
// mean the provider's default.
type GenParams struct {
	MaxTokens         int               `json:"max_tokens,omitempty"`
	Temperature       *float64          `json:"temperature,omitempty"`
	TopP              *float64          `json:"top_p,omitempty"`
	Stop              []string          `json:"stop,omitempty"`
	Seed              *int64            `json:"seed,omitempty"`
	PresencePenalty   *float64          `json:"presence_penalty,omitempty"`
	FrequencyPenalty  *float64          `json:"frequency_penalty,omitempty"`
	LogitBias         map[string]int    `json:"logit_bias,omitempty"`
	ReasoningEffort   string            `json:"reasoning_effort,omitempty"`
	User              string            `json:"user,omitempty"`
	Metadata          map[string]string `json:"metadata,omitempty"`
	Store             *bool             `json:"store,omitempty"`
	Tools             []Tool            `json:"tools,omitempty"`
	ToolChoice        *ToolChoice       `json:"tool_choice,omitempty"`
	ParallelToolCalls *bool             `json:"parallel_tool_calls,omitempty"`
	ResponseFormat    *ResponseFormat   `json:"response_format,omitempty"`
}

// Structured reports whether the request needs tools or a response format:
// a canned (degraded) text would break the caller's parser.
func (g *GenParams) Structured() bool {
	return g != nil && (len(g.Tools) > 0 || (g.ResponseFormat != nil && g.ResponseFormat.Type != "" && g.ResponseFormat.Type != "text"))
}

// ErrBadPayload marks a payload that no retry can fix.
var ErrBadPayload = errors.New("bad task payload")

// ErrNewerPayload marks a payload of a version newer than this build reads:
// a worker of a later release can run it (a rollback left it queued), so it
// is handed back, not failed.
var ErrNewerPayload = errors.New("task payload of a newer version")

// Encode returns the JSON payload.
func (p ChatPayload) Encode() ([]byte, error) {
	switch {
	case p.Body:
		p.Version = 5
	case p.Chain != nil:
		p.Version = 4
	case len(p.Trace) > 0:
		p.Version = 3
	default:
		p.Version = 2
	}
	return json.Marshal(p)
}

// readable reports whether this build reads a payload version.
func readable(v int) bool { return v >= 1 && v <= PayloadVersion }

// DecodeChat strictly decodes a chat:complete payload: unknown fields, a missing
// or unknown version and missing required fields are errors wrapping
// ErrBadPayload; a version above PayloadVersion wraps ErrNewerPayload instead.
func DecodeChat(b []byte) (ChatPayload, error) {
	var p ChatPayload
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil || !readable(p.Version) {
		// The rare path reads the version alone, so that a payload of another
		// version says so rather than naming a field this build lacks.
		var head struct {
			Version *int `json:"v"`
		}
		if herr := json.Unmarshal(b, &head); herr != nil {
			return ChatPayload{}, fmt.Errorf("%w: not JSON: %v", ErrBadPayload, herr)
		}
		if head.Version == nil {
			return ChatPayload{}, fmt.Errorf("%w: no version field", ErrBadPayload)
		}
		if *head.Version > PayloadVersion {
			return ChatPayload{}, fmt.Errorf("%w: version %d (this build reads 1 to %d)", ErrNewerPayload, *head.Version, PayloadVersion)
		}
		if !readable(*head.Version) {
			return ChatPayload{}, fmt.Errorf("%w: unknown version %d (this build reads 1 to %d)", ErrBadPayload, *head.Version, PayloadVersion)
		}
		return ChatPayload{}, fmt.Errorf("%w: %v", ErrBadPayload, err)
	}
	if dec.More() {
		return ChatPayload{}, fmt.Errorf("%w: trailing data", ErrBadPayload)
	}
	var missing []string
	for _, f := range []struct {
		name  string
		empty bool
	}{
		{"job_id", p.JobID == ""}, {"tenant", p.Tenant == ""}, {"session_id", p.SessionID == ""},
		{"message", !p.Body && p.Message == "" && len(p.Messages) == 0 && len(p.ToolResults) == 0}, {"submitted_at", p.SubmittedAt.IsZero()},
	} {
		if f.empty {
			missing = append(missing, f.name)
		}
	}
	if len(missing) > 0 {
		return ChatPayload{}, fmt.Errorf("%w: missing %s", ErrBadPayload, strings.Join(missing, ", "))
	}
	if !ValidPriority(p.Priority) {
		return ChatPayload{}, fmt.Errorf("%w: unknown priority %q", ErrBadPayload, p.Priority)
	}
	if p.Chain != nil && (p.Chain.Previous == "" || (len(p.Messages) == 0 && !p.Body)) {
		return ChatPayload{}, fmt.Errorf("%w: a chain needs its previous_response_id and the messages that follow it", ErrBadPayload)
	}
	return p, nil
}

var idEncoding = base32.NewEncoding(rkeys.IDAlphabet).WithPadding(base32.NoPadding)

const idLen = 26 // 130 bits of base32

// NewJobID returns a random job id in its session's bucket (rkeys.Bucket),
// so that the job's keys share a Redis Cluster slot with the session's.
func NewJobID(tenant, session string) string {
	var b [17]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return inBucket(idEncoding.EncodeToString(b[:]), tenant, session)
}

// IdempotentJobID derives the job id of a tenant's Idempotency-Key in its
// session's bucket, so that a retried POST lands on the same asynq TaskID and
// asynq refuses the duplicate. The key used again with another session makes
// another id: IdempotencyKeyHash lets the caller see that it was used before.
func IdempotentJobID(tenant, key, session string) string {
	return inBucket(IdempotencyKeyHash(tenant, key), tenant, session)
}

// IdempotencyKeyHash names a tenant's Idempotency-Key without its text.
func IdempotencyKeyHash(tenant, key string) string {
	sum := sha256.Sum256([]byte(tenant + "\x00" + key))
	return idEncoding.EncodeToString(sum[:])[:idLen]
}

// NewSessionID returns a random session id, for requests that are sessions
// of their own.
func NewSessionID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return idEncoding.EncodeToString(b[:])
}

func inBucket(random, tenant, session string) string {
	return "job_" + rkeys.IDBucketChars(rkeys.SessionBucket(tenant, session)) + random[2:idLen]
}

// ValidJobID reports whether id has the shape of a job id.
func ValidJobID(id string) bool {
	if len(id) != 4+idLen || !strings.HasPrefix(id, "job_") {
		return false
	}
	for _, r := range id[4:] {
		if !strings.ContainsRune(rkeys.IDAlphabet, r) {
			return false
		}
	}
	return true
}

// ChatTask is a chat:complete task of an encoded payload under task id (the
// job id, or a later task's id after a takeover). The pipeline counts
// attempts itself and ends the job after 1+maxRetries of them; asynq is given
// one more, so that its own count (which also moves on crash recovery) never
// archives a job first.
//
// It has no retention: asynq deletes the task, payload and all, when it
// succeeds. The job record holds the outcome for the retention, and it, not
// asynq's completed task, is what refuses a second run of a job id
// (docs/design.md, "What Redis keeps").
//
// headers and opts are added as given (a job handed back after it ran
// without a task: orchestration/direct.go).
func ChatTask(payload []byte, taskID, queue string, maxRetries int, headers map[string]string, opts ...asynq.Option) *asynq.Task {
	return asynq.NewTaskWithHeaders(TypeChatComplete, payload, headers,
		append([]asynq.Option{asynq.TaskID(taskID), asynq.Queue(queue), asynq.MaxRetry(maxRetries + 1)}, opts...)...)
}

// RetryTaskID names a new task that runs a job again after its attempt was
// lost (taken over) or its task went missing: "<job id>:<random>". Task ids
// other than the job id always carry it before the colon.
func RetryTaskID(jobID string) string {
	var b [5]byte
	_, _ = rand.Read(b[:])
	return jobID + ":" + idEncoding.EncodeToString(b[:])
}

// JobOfTask returns the job a task id runs.
func JobOfTask(taskID string) string {
	id, _, _ := strings.Cut(taskID, ":")
	return id
}
