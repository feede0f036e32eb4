//! strata tools.
