//! The worker role: fetch a shard, preprocess, train data-parallel, report.
