//! The coordinator role: jobs, splits, class weights, shards, metrics, embedded state.
