//! Cluster test harness and end-to-end tests.
