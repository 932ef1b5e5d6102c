package llm

// Carrier is a provider that can say which part of a request it cannot
// carry, so that a chain sends a request only to providers that take it
// whole and nothing is silently dropped.
type Carrier interface {
	// Unsupported names the first field of req (as Chat Completions names
	// it) that the provider has no equivalent for, or "".
	Unsupported(req Request) string
}
