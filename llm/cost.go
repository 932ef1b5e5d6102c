package llm

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
