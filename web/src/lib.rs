//! HTML and inline-SVG views of the cluster: the dashboard's pages and the self-contained job report.
//! Pure functions from the coordinator's protobuf messages to markup; no I/O.
