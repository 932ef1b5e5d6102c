package jobs

import "context"

// Wake records that a client follows job id's tokens live, so that every
// attempt streams them at the followed pace, and tells the worker running
// it now, if one does (store.Store.Wake). The API's stream hub calls it
// once its first token subscription to the job stands (stream.Hub.WakeWith).
func (m *Manager) Wake(ctx context.Context, id string) error { return m.st.Wake(ctx, id) }
