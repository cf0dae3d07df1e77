//! Who may call what, in the terms every service shares.

/// Role that grants operator methods.
pub const ROLE_OPERATOR: &str = "operator";
/// Role every registered user has.
pub const ROLE_CUSTOMER: &str = "customer";
