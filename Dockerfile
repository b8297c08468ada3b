# One image for both roles: `mpl-server` (api, optionally with an in-process scheduler) and
# `mpl-scheduler` (the queue worker that runs trainer processes). PyTorch 2.11.0 comes from the
# Python wheel; the trainer finds libtorch through LD_LIBRARY_PATH.

FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv nodejs npm \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/torch && /opt/torch/bin/pip install --no-cache-dir torch==2.11.0
ENV PATH=/opt/torch/bin:$PATH LIBTORCH_USE_PYTORCH=1
WORKDIR /src
COPY . .
RUN cd console && npm ci --no-audit --no-fund && npm run build
RUN cargo build --release -p mpl-trainer -p mpl-api -p mpl-scheduler

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/torch /opt/torch
COPY --from=build /src/target/release/trainer /src/target/release/mpl-server \
    /src/target/release/mpl-scheduler /usr/local/bin/
COPY --from=build /src/console/dist /usr/share/mpl/console
ENV LD_LIBRARY_PATH=/opt/torch/lib/python3.11/site-packages/torch/lib \
    MPL_CONSOLE_DIR=/usr/share/mpl/console \
    MPL_TRAINER_BIN=/usr/local/bin/trainer \
    MPL_DATA_DIR=/var/lib/mpl \
    MPL_LISTEN=0.0.0.0:8080
VOLUME /var/lib/mpl
EXPOSE 8080
CMD ["mpl-server", "serve"]
