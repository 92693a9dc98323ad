/*
 * The DPDK shim: real functions over the parts of DPDK's API that Rust cannot link directly.
 *
 * DPDK's burst and mbuf functions are `static inline` in its headers, and `rte_errno` is a
 * per-lcore thread-local, so the Rust side (`src/nic/dpdk.rs`) calls these instead. Failures
 * come back as negative errno-style codes (`-EINVAL`, `-rte_errno`); `nexus_dpdk_strerror` turns
 * a code into DPDK's text for it. Everything here is a thin wrapper: no state, no policy.
 */

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>

/* The Rust side reads a frame's address and length straight from the mbuf (no call per frame):
 * these are the offsets it uses (src/nic/dpdk.rs, MBUF_*). A DPDK with another layout fails here,
 * at build time. */
_Static_assert(offsetof(struct rte_mbuf, buf_addr) == 0, "rte_mbuf.buf_addr moved");
_Static_assert(offsetof(struct rte_mbuf, data_off) == 16, "rte_mbuf.data_off moved");
_Static_assert(offsetof(struct rte_mbuf, data_len) == 40, "rte_mbuf.data_len moved");

/* Descriptors per RX and TX queue, before the driver's limits are applied. */
#define NEXUS_RX_DESC 1024
#define NEXUS_TX_DESC 1024

const char *nexus_dpdk_strerror(int code)
{
	return rte_strerror(code < 0 ? -code : code);
}

/* Returns how many arguments EAL consumed, or -rte_errno. `argv[0]` is the program name. */
int nexus_dpdk_eal_init(int argc, char **argv)
{
	int ret = rte_eal_init(argc, argv);
	if (ret < 0)
		return rte_errno > 0 ? -rte_errno : -EINVAL;
	return ret;
}

uint16_t nexus_dpdk_port_count(void)
{
	return rte_eth_dev_count_avail();
}

/* The next valid port at or after `port_id`, or RTE_MAX_ETHPORTS when there is none. */
uint16_t nexus_dpdk_port_next(uint16_t port_id)
{
	return rte_eth_find_next(port_id);
}

uint16_t nexus_dpdk_max_ports(void)
{
	return RTE_MAX_ETHPORTS;
}

int nexus_dpdk_port_is_valid(uint16_t port_id)
{
	return rte_eth_dev_is_valid_port(port_id);
}

/* The device name (`net_ring0`, `0000:3b:00.0`), NUL-terminated in `buf`. */
int nexus_dpdk_port_name(uint16_t port_id, char *buf, size_t len)
{
	char name[RTE_ETH_NAME_MAX_LEN];
	int ret = rte_eth_dev_get_name_by_port(port_id, name);
	if (ret < 0)
		return ret;
	snprintf(buf, len, "%s", name);
	return 0;
}

/* The driver name (`net_ring`, `net_ice`), NUL-terminated in `buf`. */
int nexus_dpdk_port_driver(uint16_t port_id, char *buf, size_t len)
{
	struct rte_eth_dev_info info;
	int ret = rte_eth_dev_info_get(port_id, &info);
	if (ret < 0)
		return ret;
	snprintf(buf, len, "%s", info.driver_name ? info.driver_name : "");
	return 0;
}

int nexus_dpdk_port_mac(uint16_t port_id, uint8_t mac[RTE_ETHER_ADDR_LEN])
{
	struct rte_ether_addr addr;
	int ret = rte_eth_macaddr_get(port_id, &addr);
	if (ret < 0)
		return ret;
	memcpy(mac, addr.addr_bytes, RTE_ETHER_ADDR_LEN);
	return 0;
}

/* A packet buffer pool on the calling thread's NUMA socket, or NULL with `*err` = -rte_errno. */
struct rte_mempool *nexus_dpdk_pool_create(const char *name, unsigned int mbufs,
					    unsigned int cache, int *err)
{
	struct rte_mempool *pool = rte_pktmbuf_pool_create(
		name, mbufs, cache, 0, RTE_MBUF_DEFAULT_BUF_SIZE, (int)rte_socket_id());
	if (pool == NULL)
		*err = rte_errno > 0 ? -rte_errno : -ENOMEM;
	return pool;
}

/* Frame bytes an mbuf from `pool` holds after the headroom. */
uint16_t nexus_dpdk_pool_data_room(struct rte_mempool *pool)
{
	return rte_pktmbuf_data_room_size(pool) - RTE_PKTMBUF_HEADROOM;
}

/* Mbufs free in `pool`, counting those in every lcore's cache. */
unsigned int nexus_dpdk_pool_avail(struct rte_mempool *pool)
{
	return rte_mempool_avail_count(pool);
}

/*
 * Configures one RX and one TX queue on `port_id`, RX buffers from `pool`, and starts the port.
 * On failure returns the negative code and names the step in `*step`.
 */
int nexus_dpdk_port_start(uint16_t port_id, struct rte_mempool *pool, const char **step)
{
	struct rte_eth_conf conf;
	uint16_t nb_rxd = NEXUS_RX_DESC, nb_txd = NEXUS_TX_DESC;
	int socket, ret;

	memset(&conf, 0, sizeof(conf));
	*step = "rte_eth_dev_configure";
	ret = rte_eth_dev_configure(port_id, 1, 1, &conf);
	if (ret < 0)
		return ret;
	*step = "rte_eth_dev_adjust_nb_rx_tx_desc";
	ret = rte_eth_dev_adjust_nb_rx_tx_desc(port_id, &nb_rxd, &nb_txd);
	if (ret < 0)
		return ret;
	socket = rte_eth_dev_socket_id(port_id);
	if (socket < 0)
		socket = SOCKET_ID_ANY;
	*step = "rte_eth_rx_queue_setup";
	ret = rte_eth_rx_queue_setup(port_id, 0, nb_rxd, (unsigned int)socket, NULL, pool);
	if (ret < 0)
		return ret;
	*step = "rte_eth_tx_queue_setup";
	ret = rte_eth_tx_queue_setup(port_id, 0, nb_txd, (unsigned int)socket, NULL);
	if (ret < 0)
		return ret;
	*step = "rte_eth_dev_start";
	ret = rte_eth_dev_start(port_id);
	if (ret < 0)
		return ret;
	/* Virtual devices (net_ring, net_null) may not support it; the port works without. */
	(void)rte_eth_promiscuous_enable(port_id);
	*step = NULL;
	return 0;
}

int nexus_dpdk_port_stop(uint16_t port_id)
{
	return rte_eth_dev_stop(port_id);
}

uint16_t nexus_dpdk_rx_burst(uint16_t port_id, uint16_t queue, struct rte_mbuf **pkts,
			     uint16_t n)
{
	return rte_eth_rx_burst(port_id, queue, pkts, n);
}

uint16_t nexus_dpdk_tx_burst(uint16_t port_id, uint16_t queue, struct rte_mbuf **pkts,
			     uint16_t n)
{
	return rte_eth_tx_burst(port_id, queue, pkts, n);
}

struct rte_mbuf *nexus_dpdk_mbuf_alloc(struct rte_mempool *pool)
{
	return rte_pktmbuf_alloc(pool);
}

void nexus_dpdk_mbuf_free(struct rte_mbuf *m)
{
	rte_pktmbuf_free(m);
}

void nexus_dpdk_mbuf_free_bulk(struct rte_mbuf **pkts, unsigned int n)
{
	rte_pktmbuf_free_bulk(pkts, n);
}

/* Grows the frame by `len` bytes at its end; returns where they start, or NULL if no room. */
uint8_t *nexus_dpdk_mbuf_append(struct rte_mbuf *m, uint16_t len)
{
	return (uint8_t *)rte_pktmbuf_append(m, len);
}
