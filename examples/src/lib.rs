//! Examples only: see the `[[example]]` entries.
