//! Test helpers that start real services. Filled by the agent and operator issues.
