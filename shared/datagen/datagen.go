// Package datagen produces deterministic, endless SQL-dump-like text for tests and benchmarks.
//
// The text looks like a mysqldump with extended INSERT statements over a few tables (ids, names, e-mail
// addresses, dates, decimals, short sentences). It compresses with zstd level 1 to roughly 3-4x, like real
// dumps: neither random nor trivially compressible. Generation is cheap: a pool of row bodies is built once
// from the seed, and rows are then emitted in a seeded pseudo-random order with increasing ids, so the
// cost per byte is little more than a copy.
package datagen

import (
	"io"
	"math/rand/v2"
	"strconv"
)

// rowsPerTable is how many distinct row bodies each table's pool holds. Together with the vocabulary it
// sets the compression ratio: a larger pool repeats less within a 4 MiB frame.
const rowsPerTable = 6000

// chunk is how much text one refill produces.
const chunk = 64 << 10

var firstNames = []string{
	"James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda", "David", "Elizabeth",
	"William", "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas", "Sarah", "Charles", "Karen",
	"Christopher", "Lisa", "Daniel", "Nancy", "Matthew", "Betty", "Anthony", "Margaret", "Mark", "Sandra",
	"Donald", "Ashley", "Steven", "Kimberly", "Paul", "Emily", "Andrew", "Donna", "Joshua", "Michelle",
	"Kenneth", "Carol", "Kevin", "Amanda", "Brian", "Dorothy", "George", "Melissa", "Timothy", "Deborah",
	"Ronald", "Stephanie", "Edward", "Rebecca", "Jason", "Sharon", "Jeffrey", "Laura", "Ryan", "Cynthia",
	"Jacob", "Kathleen", "Gary", "Amy", "Nicholas", "Angela", "Eric", "Shirley", "Jonathan", "Anna",
	"Stephen", "Brenda", "Larry", "Pamela", "Justin", "Emma", "Scott", "Nicole", "Brandon", "Helen",
	"Benjamin", "Samantha", "Samuel", "Katherine", "Gregory", "Christine", "Alexander", "Debra", "Frank",
	"Rachel", "Patrick", "Carolyn", "Raymond", "Janet", "Jack", "Catherine", "Dennis", "Maria", "Jerry",
	"Heather", "Tyler", "Diane", "Aaron", "Ruth", "Jose", "Julie", "Adam", "Olivia", "Nathan", "Joyce",
	"Henry", "Virginia", "Douglas", "Victoria", "Zachary", "Kelly", "Peter", "Lauren", "Kyle", "Christina",
	"Ethan", "Joan", "Walter", "Evelyn", "Noah", "Judith", "Jeremy", "Megan", "Christian", "Andrea",
	"Keith", "Cheryl", "Roger", "Hannah", "Terry", "Jacqueline", "Gerald", "Martha", "Harold", "Gloria",
	"Sean", "Teresa", "Austin", "Ann", "Carl", "Sara", "Arthur", "Madison", "Lawrence", "Frances",
	"Dylan", "Kathryn", "Jesse", "Janice", "Jordan", "Jean", "Bryan", "Abigail", "Billy", "Alice",
	"Joe", "Julia", "Bruce", "Judy", "Gabriel", "Sophia", "Logan", "Grace", "Albert", "Denise",
	"Willie", "Amber", "Alan", "Doris", "Juan", "Marilyn", "Wayne", "Danielle", "Elijah", "Beverly",
	"Randy", "Isabella", "Roy", "Theresa", "Vincent", "Diana", "Ralph", "Natalie", "Eugene", "Brittany",
}

var lastNames = []string{
	"Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez",
	"Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore", "Jackson", "Martin",
	"Lee", "Perez", "Thompson", "White", "Harris", "Sanchez", "Clark", "Ramirez", "Lewis", "Robinson",
	"Walker", "Young", "Allen", "King", "Wright", "Scott", "Torres", "Nguyen", "Hill", "Flores", "Green",
	"Adams", "Nelson", "Baker", "Hall", "Rivera", "Campbell", "Mitchell", "Carter", "Roberts", "Gomez",
	"Phillips", "Evans", "Turner", "Diaz", "Parker", "Cruz", "Edwards", "Collins", "Reyes", "Stewart",
	"Morris", "Morales", "Murphy", "Cook", "Rogers", "Gutierrez", "Ortiz", "Morgan", "Cooper", "Peterson",
	"Bailey", "Reed", "Kelly", "Howard", "Ramos", "Kim", "Cox", "Ward", "Richardson", "Watson", "Brooks",
	"Chavez", "Wood", "James", "Bennett", "Gray", "Mendoza", "Ruiz", "Hughes", "Price", "Alvarez",
	"Castillo", "Sanders", "Patel", "Myers", "Long", "Ross", "Foster", "Jimenez", "Powell", "Jenkins",
	"Perry", "Russell", "Sullivan", "Bell", "Coleman", "Butler", "Henderson", "Barnes", "Gonzales",
	"Fisher", "Vasquez", "Simmons", "Romero", "Jordan", "Patterson", "Alexander", "Hamilton", "Graham",
	"Reynolds", "Griffin", "Wallace", "Moreno", "West", "Cole", "Hayes", "Bryant", "Herrera", "Gibson",
	"Ellis", "Tran", "Medina", "Aguilar", "Stevens", "Murray", "Ford", "Castro", "Marshall", "Owens",
}

var domains = []string{
	"example.com", "mail.example.org", "corp.example.net", "inbox.test", "webmail.example",
	"users.example.io", "post.example.de", "example.co.uk", "customers.example.fr", "ex.example.jp",
}

var cities = []string{
	"Springfield", "Riverside", "Franklin", "Greenville", "Bristol", "Clinton", "Fairview", "Salem",
	"Madison", "Georgetown", "Arlington", "Ashland", "Dover", "Oxford", "Jackson", "Burlington",
	"Manchester", "Milton", "Newport", "Auburn", "Dayton", "Lexington", "Milford", "Winchester",
	"Hudson", "Kingston", "Mount Vernon", "Centerville", "Cleveland", "Marion", "Lebanon", "Hamilton",
}

var words = []string{
	"the", "order", "was", "shipped", "to", "customer", "after", "payment", "confirmed", "by", "bank",
	"please", "call", "before", "delivery", "leave", "package", "at", "front", "door", "gift", "wrap",
	"requested", "fragile", "handle", "with", "care", "express", "standard", "return", "label", "included",
	"item", "out", "of", "stock", "backordered", "until", "next", "week", "discount", "applied", "coupon",
	"code", "invalid", "refund", "issued", "partial", "full", "account", "updated", "address", "changed",
	"invoice", "sent", "reminder", "overdue", "balance", "cleared", "priority", "support", "ticket",
	"opened", "closed", "resolved", "escalated", "manager", "review", "quality", "check", "passed",
	"failed", "warehouse", "north", "south", "east", "west", "central", "pickup", "scheduled", "morning",
	"afternoon", "evening", "weekend", "holiday", "closed", "rush", "signature", "required", "no",
	"contact", "email", "phone", "preferred", "language", "english", "spanish", "french", "german",
	"subscription", "renewal", "monthly", "annual", "trial", "expired", "upgrade", "downgrade", "plan",
	"new", "returning", "loyal", "member", "points", "earned", "redeemed", "tier", "silver", "gold",
}

var statuses = []string{"pending", "paid", "shipped", "delivered", "cancelled", "refunded", "on_hold", "processing"}

var currencies = []string{"USD", "EUR", "GBP", "JPY", "CAD", "CHF"}

var levels = []string{"INFO", "WARN", "ERROR", "DEBUG"}

type table struct {
	prefix []byte   // "INSERT INTO `name` VALUES "
	rows   [][]byte // row bodies: everything after "(<id>,"
	nextID int64
}

type gen struct {
	rng    *rand.Rand
	state  uint64 // xorshift state for the emit loop (cheaper than rng per row)
	tables []*table
	buf    []byte
	off    int
}

// New returns an endless reader of SQL-dump-like text, deterministic for a seed. Different seeds give
// different text. It never returns an error.
func New(seed int64) io.Reader {
	g := &gen{rng: rand.New(rand.NewPCG(uint64(seed), 0x7472_6f76_656e_6721))}
	g.state = g.rng.Uint64() | 1
	g.buf = make([]byte, 0, chunk+8<<10)
	g.buf = append(g.buf, "-- troveng datagen dump\n-- Server version\t10.11.6-MariaDB\n\n"+
		"/*!40101 SET NAMES utf8mb4 */;\n/*!40103 SET TIME_ZONE='+00:00' */;\n\n"...)
	mk := func(name, ddl string, body func(b []byte) []byte) {
		t := &table{prefix: []byte("INSERT INTO `" + name + "` VALUES "), nextID: 1 + g.rng.Int64N(1000)}
		for range rowsPerTable {
			t.rows = append(t.rows, body(nil))
		}
		g.tables = append(g.tables, t)
		g.buf = append(g.buf, "--\n-- Table structure for table `"+name+"`\n--\n\nDROP TABLE IF EXISTS `"+name+"`;\n"+ddl+"\n\n"...)
	}
	mk("customers", "CREATE TABLE `customers` (\n  `id` bigint NOT NULL AUTO_INCREMENT,\n  `first_name` varchar(64),\n"+
		"  `last_name` varchar(64),\n  `email` varchar(255),\n  `phone` varchar(32),\n  `city` varchar(64),\n"+
		"  `created_at` datetime,\n  `balance` decimal(12,2),\n  PRIMARY KEY (`id`)\n) ENGINE=InnoDB;", g.customer)
	mk("orders", "CREATE TABLE `orders` (\n  `id` bigint NOT NULL AUTO_INCREMENT,\n  `customer_id` bigint,\n"+
		"  `placed_at` datetime,\n  `status` varchar(16),\n  `total` decimal(12,2),\n  `currency` char(3),\n"+
		"  `note` text,\n  PRIMARY KEY (`id`)\n) ENGINE=InnoDB;", g.order)
	mk("order_items", "CREATE TABLE `order_items` (\n  `id` bigint NOT NULL AUTO_INCREMENT,\n  `order_id` bigint,\n"+
		"  `product_id` bigint,\n  `quantity` int,\n  `unit_price` decimal(10,2),\n  PRIMARY KEY (`id`)\n) ENGINE=InnoDB;", g.item)
	mk("events", "CREATE TABLE `events` (\n  `id` bigint NOT NULL AUTO_INCREMENT,\n  `at` datetime(3),\n"+
		"  `level` varchar(8),\n  `user_id` bigint,\n  `ip` varchar(45),\n  `message` text,\n  PRIMARY KEY (`id`)\n) ENGINE=InnoDB;", g.event)
	return g
}

func (g *gen) pick(list []string) string { return list[g.rng.IntN(len(list))] }

func (g *gen) date(b []byte, withTime bool) []byte {
	b = strconv.AppendInt(b, int64(2015+g.rng.IntN(10)), 10)
	b = append(b, '-')
	b = pad2(b, 1+g.rng.IntN(12))
	b = append(b, '-')
	b = pad2(b, 1+g.rng.IntN(28))
	if withTime {
		b = append(b, ' ')
		b = pad2(b, g.rng.IntN(24))
		b = append(b, ':')
		b = pad2(b, g.rng.IntN(60))
		b = append(b, ':')
		b = pad2(b, g.rng.IntN(60))
	}
	return b
}

func pad2(b []byte, n int) []byte {
	return append(b, byte('0'+n/10), byte('0'+n%10))
}

func (g *gen) decimal(b []byte, max int) []byte {
	b = strconv.AppendInt(b, int64(g.rng.IntN(max)), 10)
	b = append(b, '.')
	return pad2(b, g.rng.IntN(100))
}

func (g *gen) sentence(b []byte, minWords, maxWords int) []byte {
	n := minWords + g.rng.IntN(maxWords-minWords+1)
	for i := range n {
		if i > 0 {
			b = append(b, ' ')
		}
		b = append(b, g.pick(words)...)
	}
	return b
}

func (g *gen) customer(b []byte) []byte {
	first, last := g.pick(firstNames), g.pick(lastNames)
	b = append(b, '\'')
	b = append(b, first...)
	b = append(b, "','"...)
	b = append(b, last...)
	b = append(b, "','"...)
	for _, c := range []byte(first) {
		b = append(b, c|0x20)
	}
	b = append(b, '.')
	for _, c := range []byte(last) {
		b = append(b, c|0x20)
	}
	b = strconv.AppendInt(b, int64(g.rng.IntN(1000)), 10)
	b = append(b, '@')
	b = append(b, g.pick(domains)...)
	b = append(b, "','+1-555-"...)
	b = strconv.AppendInt(b, int64(100+g.rng.IntN(900)), 10)
	b = append(b, '-')
	b = strconv.AppendInt(b, int64(1000+g.rng.IntN(9000)), 10)
	b = append(b, "','"...)
	b = append(b, g.pick(cities)...)
	b = append(b, "','"...)
	b = g.date(b, true)
	b = append(b, "',"...)
	return g.decimal(b, 20000)
}

func (g *gen) order(b []byte) []byte {
	b = strconv.AppendInt(b, int64(1+g.rng.IntN(500000)), 10)
	b = append(b, ",'"...)
	b = g.date(b, true)
	b = append(b, "','"...)
	b = append(b, g.pick(statuses)...)
	b = append(b, "',"...)
	b = g.decimal(b, 5000)
	b = append(b, ",'"...)
	b = append(b, g.pick(currencies)...)
	b = append(b, "',"...)
	if g.rng.IntN(4) == 0 {
		return append(b, "NULL"...)
	}
	b = append(b, '\'')
	b = g.sentence(b, 3, 12)
	return append(b, '\'')
}

func (g *gen) item(b []byte) []byte {
	b = strconv.AppendInt(b, int64(1+g.rng.IntN(2000000)), 10)
	b = append(b, ',')
	b = strconv.AppendInt(b, int64(1+g.rng.IntN(20000)), 10)
	b = append(b, ',')
	b = strconv.AppendInt(b, int64(1+g.rng.IntN(9)), 10)
	b = append(b, ',')
	return g.decimal(b, 800)
}

func (g *gen) event(b []byte) []byte {
	b = append(b, '\'')
	b = g.date(b, true)
	b = append(b, '.')
	b = strconv.AppendInt(b, int64(100+g.rng.IntN(900)), 10)
	b = append(b, "','"...)
	b = append(b, g.pick(levels)...)
	b = append(b, "',"...)
	b = strconv.AppendInt(b, int64(1+g.rng.IntN(500000)), 10)
	b = append(b, ",'10."...)
	b = strconv.AppendInt(b, int64(g.rng.IntN(256)), 10)
	b = append(b, '.')
	b = strconv.AppendInt(b, int64(g.rng.IntN(256)), 10)
	b = append(b, '.')
	b = strconv.AppendInt(b, int64(g.rng.IntN(256)), 10)
	b = append(b, "','"...)
	b = g.sentence(b, 4, 16)
	return append(b, '\'')
}

// next is a xorshift64* step: the emit loop's only randomness, one call per row.
func (g *gen) next() uint64 {
	x := g.state
	x ^= x >> 12
	x ^= x << 25
	x ^= x >> 27
	g.state = x
	return x * 2685821657736338717
}

// statement appends one extended INSERT of 20..275 rows of a random table.
func (g *gen) statement() {
	r := g.next()
	t := g.tables[(r>>8)%uint64(len(g.tables))]
	n := 20 + int(r>>40)%256
	b := append(g.buf, t.prefix...)
	for i := range n {
		if i > 0 {
			b = append(b, ',')
		}
		x := g.next()
		b = append(b, '(')
		b = strconv.AppendInt(b, t.nextID, 10)
		b = append(b, ',')
		b = append(b, t.rows[(x>>16)%uint64(len(t.rows))]...)
		b = append(b, ')')
		t.nextID += 1 + int64(x&0xff)/250 // mostly dense ids, with an occasional gap
	}
	g.buf = append(b, ";\n"...)
}

func (g *gen) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		if g.off == len(g.buf) {
			g.buf, g.off = g.buf[:0], 0
			for len(g.buf) < chunk {
				g.statement()
			}
		}
		c := copy(p[n:], g.buf[g.off:])
		g.off += c
		n += c
	}
	return n, nil
}
