//! ampoule-runtime: host side of Ampoule.
