//! The simulated ENT origin used by `ecluse demo`, the tests and the benches.
