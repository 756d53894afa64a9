"""One process of a multi-process data-parallel run on the CPU (gloo collectives).

    python multihost_worker.py PORT NUM_PROCESSES PROCESS_ID LOCAL_DEVICES OUT.npz

With NUM_PROCESSES = 1 it is the single-process reference on LOCAL_DEVICES devices.
Process 0 writes the trained parameters to OUT.npz. Used by tests/test_multihost.py.
"""

import sys

import jax

port, num_processes, process_id, local_devices, out = sys.argv[1:6]
num_processes, process_id, local_devices = int(num_processes), int(process_id), int(local_devices)
jax.config.update("jax_num_cpu_devices", local_devices)
jax.config.update("jax_enable_x64", True)
if num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes, process_id, initialization_timeout=60)

import numpy as np  # noqa: E402
import optax  # noqa: E402

import fnn  # noqa: E402

data = fnn.data.load("moons", seed=0)
net = fnn.MLP((data.in_dim, 16, 16, data.out_dim), "tanh")
params = fnn.init(jax.random.key(0), net)
devices = num_processes * local_devices
assert len(jax.devices()) == devices, jax.devices()
trained, history = fnn.fit_parallel(
    net, "softmax_cross_entropy", params, data.x_train, data.y_train, devices=devices,
    key=jax.random.key(1), optimizer=optax.adam(1e-2), epochs=3, batch_size=30, dropout=0.1,
    test=(data.x_test, data.y_test))
if process_id == 0:
    arrays = {f"{l}/{k}": np.asarray(a) for l, layer in enumerate(trained) for k, a in layer.items()}
    np.savez(out, test_loss=np.asarray(history["test_loss"]), **arrays)
print(f"process {process_id}: done, test loss {history['test_loss'][-1]:.6f}", flush=True)
