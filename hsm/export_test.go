package hsm

import "context"

// Borrow takes a session out of the pool until the returned func is called, so
// tests can exhaust the pool deterministically.
func (m *Module) Borrow(ctx context.Context) (func(), error) {
	s, err := m.acquire(ctx)
	if err != nil {
		return nil, err
	}
	return func() { m.release(s) }, nil
}

// Slot is the slot id of the current generation.
func (m *Module) Slot() uint {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cur.slot
}
