//! The backend suite on the backends that need nothing outside the process: memory (the `any`
//! cases) and SQLite (the `durable` ones too). The cases themselves are in
//! tests/common/backends.rs, shared with tests/redis.

use poolgate_test_common::backends::*;

/// One test per case and backend: memory is not durable, so it runs only the `any` cases.
macro_rules! backend_suite {
    (any: [$($any:ident),* $(,)?], durable: [$($durable:ident),* $(,)?] $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $any() {
                    super::$any("memory").await
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $any() {
                    super::$any("sqlite:").await
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $durable() {
                    super::$durable("sqlite:").await
                }
            )*
        }
    };
}

poolgate_test_common::backend_cases!(backend_suite);
