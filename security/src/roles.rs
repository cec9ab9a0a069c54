//! Roles a bearer token grants, and the authenticated caller of a request.

use std::fmt;
use std::str::FromStr;

/// What a caller may do; [`crate::policy`] lists the roles allowed on every RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Everything, including every RPC of every service.
    Admin,
    /// Submits, cancels and resumes jobs, promotes models; reads everything a viewer reads.
    Operator,
    /// Reads jobs, workers and the model registry.
    Viewer,
    /// A training worker: the `WorkerControl` service.
    Worker,
    /// An inference client: the `Inference` service.
    Client,
}

impl Role {
    /// Every role, in declaration order.
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Operator,
        Role::Viewer,
        Role::Worker,
        Role::Client,
    ];

    /// The lowercase name used in tokens files and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
            Role::Worker => "worker",
            Role::Client => "client",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// The error of parsing a [`Role`]: the text that is not a role.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?} (expected admin, operator, viewer, worker or client)")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| UnknownRole(text.to_string()))
    }
}

/// An authenticated caller: the principal name of its token and the role the token grants.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

impl Principal {
    /// The caller of a server running without tokens (explicit insecure mode): an admin named "anonymous".
    pub fn anonymous() -> Self {
        Self {
            name: "anonymous".to_string(),
            role: Role::Admin,
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{} ({})", self.name, self.role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_through_their_names() {
        for role in Role::ALL {
            assert_eq!(role.to_string().parse::<Role>(), Ok(role));
        }
        assert_eq!(
            "Admin".parse::<Role>(),
            Err(UnknownRole("Admin".to_string()))
        );
        assert!(
            "boss"
                .parse::<Role>()
                .unwrap_err()
                .to_string()
                .contains("\"boss\"")
        );
    }
}
