//! What the bench (`python -m lsio_torch.bench`) measures beside the engine, kept out of the
//! engine's core: the ceilings a run is compared with.

pub mod bounds;
