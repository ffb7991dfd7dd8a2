//! Cheap number formatting for verdict reasons.

use core::fmt;

/// Formats a number with one decimal (`68.6`) using integer arithmetic: float formatting
/// with a precision costs more than many a rule's whole logic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OneDecimal(pub f64);

impl fmt::Display for OneDecimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let x = self.0;
        if !x.is_finite() || x.abs() >= 1e15 {
            return write!(f, "{x}");
        }
        let tenths = (x * 10.0 + if x < 0.0 { -0.5 } else { 0.5 }) as i64;
        let sign = if tenths < 0 { "-" } else { "" };
        let tenths = tenths.unsigned_abs();
        write!(f, "{sign}{}.{}", tenths / 10, tenths % 10)
    }
}

#[cfg(test)]
mod tests {
    use alloc::format;

    use super::*;

    #[test]
    fn rounds_to_one_decimal() {
        assert_eq!(format!("{}", OneDecimal(68.55)), "68.6");
        assert_eq!(format!("{}", OneDecimal(8.0)), "8.0");
        assert_eq!(format!("{}", OneDecimal(-0.04)), "0.0");
        assert_eq!(format!("{}", OneDecimal(-2.26)), "-2.3");
        assert_eq!(format!("{}", OneDecimal(f64::NAN)), "NaN");
    }
}
