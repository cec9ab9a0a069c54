//! Security of every plankton-cluster service: TLS with certificate reload, bearer tokens mapped to roles, the
//! access policy of every RPC, and the audit log of mutating calls.
