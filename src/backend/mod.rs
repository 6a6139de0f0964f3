//! Compute backends behind one small interface (see `Backend`).
