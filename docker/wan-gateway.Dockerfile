# wan-gateway:lab, FROM scratch: no base image is pulled, so it builds with no container registry.
# The build context is the staging dir that scripts/lab-images.sh prepares
# (target/lab-images/wan-gateway): the static-pie binary, etc/passwd + etc/group with the
# unprivileged user 'registry' (uid/gid 10001), and empty data/ and tmp/ dirs.
FROM scratch
COPY etc/ /etc/
COPY --chown=10001:10001 data/ /data/
COPY --chown=10001:10001 tmp/ /tmp/
COPY wan-gateway /usr/local/bin/wan-gateway
USER 10001:10001
WORKDIR /data
EXPOSE 8302
LABEL org.opencontainers.image.title="wan-gateway" \
      io.github.registry-rs.lab="1" \
      org.opencontainers.image.description="WAN gateway federating datacenters"
ENTRYPOINT ["/usr/local/bin/wan-gateway"]
