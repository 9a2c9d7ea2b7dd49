# registry-client:lab, FROM scratch: no base image is pulled, so it builds with no container registry.
# The build context is the staging dir that scripts/lab-images.sh prepares
# (target/lab-images/registry-client): the static-pie binary, etc/passwd + etc/group with the
# unprivileged user 'registry' (uid/gid 10001), and empty data/ and tmp/ dirs.
FROM scratch
COPY etc/ /etc/
COPY --chown=10001:10001 data/ /data/
COPY --chown=10001:10001 tmp/ /tmp/
COPY registry-client /usr/local/bin/registry-client
USER 10001:10001
WORKDIR /data
EXPOSE 8500
LABEL org.opencontainers.image.title="registry-client" \
      io.github.registry-rs.lab="1" \
      org.opencontainers.image.description="registry client agent"
ENTRYPOINT ["/usr/local/bin/registry-client"]
