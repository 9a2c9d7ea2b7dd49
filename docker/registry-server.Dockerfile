# registry-server:lab, FROM scratch: no base image is pulled, so it builds with no container registry.
# The build context is the staging dir that scripts/lab-images.sh prepares
# (target/lab-images/registry-server): the static-pie binary, etc/passwd + etc/group with the
# unprivileged user 'registry' (uid/gid 10001), and empty data/ and tmp/ dirs.
FROM scratch
COPY etc/ /etc/
COPY --chown=10001:10001 data/ /data/
COPY --chown=10001:10001 tmp/ /tmp/
COPY registry-server /usr/local/bin/registry-server
USER 10001:10001
WORKDIR /data
EXPOSE 8500 8300
LABEL org.opencontainers.image.title="registry-server" \
      io.github.registry-rs.lab="1" \
      org.opencontainers.image.description="registry server (Raft member of one datacenter, Consul HTTP API)"
ENTRYPOINT ["/usr/local/bin/registry-server"]
