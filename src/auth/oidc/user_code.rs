//! The codes of the browser hand-off (RFC 8628 style): a thin client shows one, the person
//! types it (or opens a link holding it) on another device.
//!
//! Eight letters of [`ALPHABET`] — consonants only, as RFC 8628 §6.1 suggests: no vowels (no
//! words), no digits, nothing that looks like another character (0/O, 1/I/L, 5/S are not
//! there). 20⁸ ≈ 2.6·10¹⁰ codes, about 34 bits. Shown as `XXXX-XXXX`; what a person types is
//! [`normalise`]d (case, dashes and spaces) and compared with [`matches`] in constant time.

use rand::Rng;
use subtle::ConstantTimeEq;

/// The letters a code is made of.
pub const ALPHABET: &[u8; 20] = b"BCDFGHJKLMNPQRSTVWXZ";

/// Letters in a code.
pub const LEN: usize = 8;

/// A new random code, as stored and compared (`BCDFGHJK`, no dash).
pub fn generate() -> String {
    let mut rng = rand::rng();
    (0..LEN)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

/// A code as shown to a person: `BCDF-GHJK`.
pub fn display(code: &str) -> String {
    match (code.get(..LEN / 2), code.get(LEN / 2..)) {
        (Some(a), Some(b)) => format!("{a}-{b}"),
        _ => code.to_owned(),
    }
}

/// What a person typed, as a stored code: upper case, dashes and white space dropped. `None`
/// when it cannot be a code (another length, a letter not in [`ALPHABET`]).
pub fn normalise(typed: &str) -> Option<String> {
    let code: String = typed
        .chars()
        .filter(|c| *c != '-' && !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    (code.len() == LEN && code.bytes().all(|b| ALPHABET.contains(&b))).then_some(code)
}

/// Whether what a person typed is `expected` (a stored code), in time that does not depend on
/// how much of it is right.
pub fn matches(typed: &str, expected: &str) -> bool {
    let Some(code) = normalise(typed) else {
        return false;
    };
    code.len() == expected.len() && bool::from(code.as_bytes().ct_eq(expected.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_eight_letters_of_the_alphabet_and_differ() {
        let codes: std::collections::BTreeSet<String> = (0..2000).map(|_| generate()).collect();
        assert!(codes.len() > 1990, "random codes repeat: {}", codes.len());
        for code in &codes {
            assert_eq!(code.len(), LEN);
            assert!(code.bytes().all(|b| ALPHABET.contains(&b)), "{code}");
        }
        // Every letter is used (the draw covers the whole alphabet).
        let used: std::collections::BTreeSet<u8> = codes.iter().flat_map(|c| c.bytes()).collect();
        assert_eq!(used.len(), ALPHABET.len());
    }

    #[test]
    fn the_alphabet_has_no_vowels_digits_or_look_alikes() {
        for bad in b"AEIOUY0123456789" {
            assert!(!ALPHABET.contains(bad), "{}", char::from(*bad));
        }
        let distinct: std::collections::BTreeSet<&u8> = ALPHABET.iter().collect();
        assert_eq!(distinct.len(), ALPHABET.len());
    }

    #[test]
    fn codes_are_shown_with_a_dash_and_read_back_whatever_the_case_and_dashes() {
        assert_eq!(display("BCDFGHJK"), "BCDF-GHJK");
        for typed in [
            "BCDF-GHJK",
            "bcdf-ghjk",
            "bcdfghjk",
            " BcDf GhJk ",
            "B-C-D-F-G-H-J-K",
        ] {
            assert_eq!(normalise(typed).as_deref(), Some("BCDFGHJK"), "{typed}");
            assert!(matches(typed, "BCDFGHJK"), "{typed}");
        }
        for typed in [
            "",
            "BCDF-GHJ",
            "BCDF-GHJKL",
            "BCDF-GHJ0",
            "BCDF-GHJA",
            "ＢCDF-GHJK",
        ] {
            assert_eq!(normalise(typed), None, "{typed}");
            assert!(!matches(typed, "BCDFGHJK"), "{typed}");
        }
        assert!(!matches("BCDF-GHJL", "BCDFGHJK"));
        let code = generate();
        assert!(matches(&display(&code).to_lowercase(), &code));
    }
}
