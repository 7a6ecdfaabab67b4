// Preloaded into the Cube server of the harness (node --require): Cube 0.33 listens on
// every interface (server.listen(PORT), no setting for the address), so a listen on a bare
// port is bound to 127.0.0.1 instead. Cube then is reachable from this machine only, as
// beside the broker in a pod.
'use strict';

const net = require('net');

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function listenOnLoopback(...args) {
  const bare = typeof args[0] === 'number' || (typeof args[0] === 'string' && /^\d+$/.test(args[0]));
  if (bare && typeof args[1] !== 'string') {
    args.splice(1, 0, '127.0.0.1');
  }
  return listen.apply(this, args);
};
