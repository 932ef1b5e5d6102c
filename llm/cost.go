package llm

import "github.com/chatfleet/chatfleet/tasks"

// What a call is expected to cost before it is made, for the TPM limit.

// estimateCost is the tokens a call may use before it is made: the prompt
// (about four bytes a token, tool calls, tool schemas and a response schema
// included; imageTokens an image) and the output cap.
func estimateCost(req Request) int {
	bytes := 0
	n := 0
	for _, m := range req.Messages {
		bytes += len(m.Content)
		for _, part := range m.Parts {
			if part.Type == "image_url" {
				n += imageTokens
			}
		}
		for _, tc := range m.ToolCalls {
			bytes += len(tc.Function.Name) + len(tc.Function.Arguments)
		}
		n++
	}
	for _, t := range req.Params.Tools {
		bytes += len(t.Function.Name) + len(t.Function.Description) + len(t.Function.Parameters)
	}
	if rf := req.Params.ResponseFormat; rf != nil && rf.JSONSchema != nil {
		bytes += len(rf.JSONSchema.Schema)
	}
	n += bytes / 4
	out := req.Params.MaxTokens
	if out <= 0 {
		out = defaultOutputEstimate
	}
	return n + out
}

// imageTokens stands for one input image: what OpenAI bills for a
// 1024×1024 image at high detail (Anthropic bills about as much for one of
// 900×900). Settled against the usage reported once the call ends.
const imageTokens = 765

// defaultOutputEstimate stands for the output of a call with no max_tokens.
const defaultOutputEstimate = 512

// EstimateJob is what a job is expected to cost before it is queued, for its
// tenant's budget: the prompt it brings and the output cap. The session's
// history, read when the job runs, is not known yet.
func EstimateJob(p tasks.ChatPayload) (prompt, output int) {
	msgs := p.Messages
	if len(msgs) == 0 {
		msgs = append(append([]Message{}, p.ToolResults...), Message{Role: "user", Content: p.Message})
	}
	req := Request{Messages: msgs}
	if p.Params != nil {
		req.Params = *p.Params
	}
	total := estimateCost(req)
	output = req.Params.MaxTokens
	if output <= 0 {
		output = defaultOutputEstimate
	}
	return total - output, output
}

// EstimatePrompt is the prompt's part of a call's estimate.
func EstimatePrompt(req Request) int {
	out := req.Params.MaxTokens
	if out <= 0 {
		out = defaultOutputEstimate
	}
	return estimateCost(req) - out
}
