# syntax=docker/dockerfile:1
# The image the helm chart deploys: docker build -t ghcr.io/patd/patd:0.1.0 .

# Build with the same toolchain the project is developed on.
FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so that a source-only change reuses their layer.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs benches/token.rs \
    && cargo build --release --locked --bin patd \
    && rm -rf src benches
COPY src src
COPY benches benches
COPY migrations migrations
# Migrations are embedded at compile time; touch so cargo rebuilds the crate.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin patd \
    && install -D target/release/patd /out/patd

# glibc and libgcc only; no shell, no package manager. "nonroot" is uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/patd /usr/local/bin/patd
USER 65532:65532
# gRPC (health, reflection, tokens, introspection) and, when enabled, /metrics.
EXPOSE 50051 9090
# `docker run` alone serves SQLite in the nonroot user's home (mount a volume there
# to keep it); a fleet sets PATD_DATABASE_URL (the chart reads it from a Secret).
# No PATD_* variables here: they would override the chart's configuration file.
WORKDIR /home/nonroot
HEALTHCHECK --interval=10s --timeout=3s CMD ["/usr/local/bin/patd", "health", "--addr", "127.0.0.1:50051", "--service", "liveness"]
ENTRYPOINT ["/usr/local/bin/patd"]
CMD ["serve", "--listen", "0.0.0.0:50051"]
