// Golden payloads of PowerSGD (needs Eigen; the other codecs are in test_golden_payloads.cpp,
// whose top comment says what a case hashes and how inputs are made).
//
// Ranks 1, 2 and 4, with and without the built-in error feedback, two steps each (the second
// warm-started from the first's Q), through both APIs:
//  - encode (powersgd/...): run_golden — the payloads, then the saved state (warm start,
//    residual); decode and decode_add of each payload;
//  - the round API (powersgd_rounds/...), as one worker: compute_p, compute_q,
//    decompress. The payload digest covers each step's P̂ (after compute_q) and Q, then the
//    saved state; the decoded digest each step's decompressed tensor.
// Sizes 0, 1, 255, 256, 257 and 65,536 (1,048,576 for rank 4 with error feedback), in the
// default shape (powersgd_default_shape): 0, 1 and 257 (a prime) have no shape any rank
// compresses and go uncompressed (flag bit 0), which is pinned too; 255 is 15 × 17, 256 is
// 16 × 16, 65,536 is 256 × 256, 1,048,576 is 1024 × 1024. One case gives a shape.
//
// P̂ comes from Eigen's Householder QR: these bytes also pin Eigen's arithmetic as built
// here (its version and the compiler's flags), not only gradcomm's.
//
// Regenerate after a deliberate format change:
//   GRADCOMM_GOLDEN_PRINT=1 build/tests/test_golden_payloads_powersgd | grep '^    {"'
#include "../support/golden_payloads.hpp"

#include <gradcomm/codec/powersgd.hpp>

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace gc = gradcomm;
namespace gt = gradcomm_test;

namespace {

// clang-format off
constexpr gt::golden_row golden_table[] = {
    {"powersgd/r1/ef/n=0", "453a2bb0d890c4109e8704565f49a06fc559dba2b362df88453f5c5aa1135a15", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
    {"powersgd/r1/ef/n=1", "72e6587719641f472d18c48ec72df8f83ee8081018354dc67f3d4d35e7dc51d5", "64dec3681d30547de6bb18d70602768e63d8fb8d29e8fa291a712252247f4980"},
    {"powersgd/r1/ef/n=255", "5cf6cb89912634c0ea043ed598e51f17c4901ad28d93bb5be69ef5045e3e2926", "1d328169cf598833960ed97e68fc4d31f7f28ff21d03d9cdb007352951ff0fac"},
    {"powersgd/r1/ef/n=256", "8a16389b724a791a26c47f2a939116398b6d5ffd1269687ce6bbfea0448b5c76", "5a51b5bd39046a9eed06fafe5cb52d7c259fcef709fd5811e77866f7ee99b370"},
    {"powersgd/r1/ef/n=257", "7f81360dda2265dc754be70932737ed6d34dbf648c1e6087417a97faea6e14c8", "2807bca7ba04f4f518331d6d2dd7e423ef679157402ee98a5e05b156fde5c751"},
    {"powersgd/r1/ef/n=65536", "d1af635b2df11c88126030ef6698dadc6d1761398200659281729cfaa3599581", "cdd1ac6d4c3c573aa726621a372c57c11eeddf0c9937c7483e960c4ed96f224a"},
    {"powersgd/r1/no_ef/n=0", "3feace2d233d304b39cbd1f5717bb62e84938e464f1419dd8884f85544aa7b40", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
    {"powersgd/r1/no_ef/n=1", "668e8e61be962a4dd89382db54d45d4048d86998849a00ba9a5e7cd4868ab218", "76355ddf060b5c9714580d8750d977c8d039031be028b2deb4360b2632a8843e"},
    {"powersgd/r1/no_ef/n=255", "a32007cb66081e96ee2dd3707bac13f415fbcf2ab7a4ed686b70cf99902eb9ca", "c356653937dbd0970b3d1438d4a898acb88a98ae752c88bff6a3b9db266a5d99"},
    {"powersgd/r1/no_ef/n=256", "70cd8a9d541e4260d731c03c0cab3e4b1db300c83357d0dc25d695a29940ffbd", "a6b372e9b0f4e601f4100b5d43ad2b1a6418c5893d074deed70575afd15bace7"},
    {"powersgd/r1/no_ef/n=257", "66a0c54ce56933f9349e862289708f7c3f77e9c5270bdac46b72eee1e401ab79", "2c28dea9057fae72786ba3da6e49eb33bb8a7e18dcd63ce3f17c4b3719f09fad"},
    {"powersgd/r1/no_ef/n=65536", "e0d69f371a1a95ad31cfc41c078ea7ba1326315aacdb0882a3165fb245cfeae3", "55e13f380f10668fbd4303ccfcb54e9c7f63b5caf29b91f211b94ea0025cf876"},
    {"powersgd/r2/ef/n=0", "cb8af622727d32f5fe4cae75d1dc982bcdda4ee8cd1877e033623fe4b70cac41", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
    {"powersgd/r2/ef/n=1", "79d1ef6a3f236631b2b24836c770212d1af58c551eb6ead3bae1b2c44ea75fcb", "e7b636d2035fc9eb5fce4d68533d47c67ad4a8dc0650ef559bdc0bfc83f972ae"},
    {"powersgd/r2/ef/n=255", "ea21637d6d43f074b874ebeec36b34b6b978e9a01d64b2c628884dd4573fc055", "861f3f735437c15cfca89344860f3d622ba77ab8c3d827a6c75da60e34bf294e"},
    {"powersgd/r2/ef/n=256", "9955ebbaed67d7eb2688099ebc83f7d724565d0a2aafd4703c0ee2a108da61dd", "ac47a94dd432de9e3fcb3598662abbb1607150ebf0793edc8a657e92f71f78f5"},
    {"powersgd/r2/ef/n=257", "ea17b6bcf6b71acdd3121c63f37cdbc837d9977fc9e77bf26d87e1fbeead0eb6", "c80ad5b4145d64e8e6f3ac63aa0599e85054bdfbcff905c74700ffa26556c6f7"},
    {"powersgd/r2/ef/n=65536", "b9ef23288af925e5660ab9bf97c7f60798a233908c535204f465d2ab754bc771", "0d1620ec4627f2bf567b5273d854e95dd6d64799ed320151223f03a59a0db846"},
    {"powersgd/r2/no_ef/n=0", "76cd1f7cec0f84f47ec15fde7d8b8bd6afdc69263a68517d4c999bd0071157a6", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
    {"powersgd/r2/no_ef/n=1", "41573fdb8a489fc76c18f0d7f07ed25e108acf571315972ad9254e667c5f9ec7", "dff7a9e3399324edacc808c1bdcddaf3bc62d2a0a5345b543d7044ec2e8baefd"},
    {"powersgd/r2/no_ef/n=255", "79e16f4252f2c9ee592d0f77276903b6ada40482f511438200e46358ade384f6", "06b2a36038c369d40854986cfe703cb5eb0ab39e2fb434f29f2dbb54f952464b"},
    {"powersgd/r2/no_ef/n=256", "24e447c53d5fbe5bd790e8da2859f8f5c50575224ea63056cf9db2bb7024fdf7", "9c650f75685db0ac0b172b7e616f7c9afc60ed57faf2412edd6613b54e6069cf"},
    {"powersgd/r2/no_ef/n=257", "733432619941a9e868a530fdcd6419478452bfe998c352d26572cc38448f92a5", "df135384a189b9deffffb6294011ac670f46f1869f5d48f04b6467f3556a2579"},
    {"powersgd/r2/no_ef/n=65536", "ea80d6e56687917e19f7f86670b02b59c3366956e88cbc3ce946fcc1a3ed89eb", "ca82f63c285ea617d2d45bac16b4057a76b2c300ec01f229cd46c1d1679f268f"},
    {"powersgd/r4/ef/n=0", "de9078300249868b31597239a2eb2fc529529340f5c5c381741c58af51b6a284", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
    {"powersgd/r4/ef/n=1", "521a92e0606898ec2359ebd9d8a41c65fe1c9bad0d95813b0c288d6a8172b410", "3d8fdf1e59a093992359f59f22a8e6baad884970b76f65996d583f2ad96ad9d8"},
    {"powersgd/r4/ef/n=255", "a0fe3b539d0d1f52bb5688af43ad7ef1d45664ef839169696ac3ad1547a94caf", "7c6184ff6ea384c8d318c7d59d721f868b605936136d8699b7fa38f7497bd39e"},
    {"powersgd/r4/ef/n=256", "77a22ddd613ec4aabae0f44f5af49877cfb4c3bf71241fbea14af757f5fb8e84", "03a2df8dba15ae40596c545ae8ca0decdb6991718a1c79df157e0cd999053453"},
    {"powersgd/r4/ef/n=257", "14067f2f168022856a5e80a0cea778bcfe19dbe4519e0ba592405ffccd36ba1d", "fdd89d9c6c95b37a9caefc525766b5aab0be5ea8b0a48150f6d972ea7a01fcb8"},
    {"powersgd/r4/ef/n=1048576", "d132bdc90d45c02fec53860c877e04bd74e6bcbda563ba5a84b90f7733771ff7", "883ea7fbc555653e856ed8ba3c73531e648aa23afa901a22a80fb264a7a3dc40"},
    {"powersgd/r4/no_ef/n=0", "e03e6c1070f0cabb205b2893dc9bd092a4d87c7c052601311f556ba70aab55f9", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
    {"powersgd/r4/no_ef/n=1", "33ff2b87642bbecbd21deabd59c544e1056a0c02cd1107fff438eb876aad94ce", "df57590de6fc0fcaa9454cddb3e9653af7c97a1c2ee62bf628a542586fad5fe7"},
    {"powersgd/r4/no_ef/n=255", "9693ebbd003c314cda450cf19413a2d2a3937287ce81ed279d31469ac11d00ea", "5f84e3a5ff65bcbb29892e64606243df65873e55a737f344a28606c504ecbf6b"},
    {"powersgd/r4/no_ef/n=256", "c435aab13be5e315494eab96f1da118ab8b22827cfb40b305c65003d8096e748", "4f7a627453d8b7c68a9d3bff3a74a913afa940d77cdc949f27ffa31eb3cbd07f"},
    {"powersgd/r4/no_ef/n=257", "5912ba9e0432dd0ad48a82d6e5a6fca55cc552e3d0a4a6b2f27b2154794b6b4b", "8fe65b1a06b11f760772cf8f62909c6f4e3e66b0f357b227492b8a142861730c"},
    {"powersgd/r4/no_ef/n=65536", "0928be54d161ff3876dbec10dade5b1d35a8d4578bdf474d03dbae70af1fd306", "3f155cd7739d4586a3eea622f4498415fa0cb2fe5a61b4308534c8b7113c7c19"},
    {"powersgd/r2/ef/128x512/n=65536", "d120bf852bac6bf05a843b9f76cf7f0d8cd6532717cecc02524b540f71f71d87", "ee1a7a7547c625aacf07b8ab4af0b2adce66643a222d3a8301e9785ebe741159"},
    {"powersgd_rounds/r1/ef/n=0", "af407b35caf5df18b23dfdef0acefc3da88e8978712620e74bb90bcef3e0913c", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
    {"powersgd_rounds/r1/ef/n=1", "2ff21f0b29bb2d6ec8c8086f91b7b9a519a06153439d31f4fa4777167011aaef", "7fcc9d06f9e8fefc4c60a70398b970c1db058b1e48e92ffc9d5f083d3afbadb4"},
    {"powersgd_rounds/r1/ef/n=255", "a0fb9037fe1a5c360c7708e41a8fb2d6450f9059f2f9a477790d00e7bf585beb", "ab967d5b6d35b8400c7081dc53ff12eb4dfdf8562d51bfb554de4eda37600a1f"},
    {"powersgd_rounds/r1/ef/n=256", "bcfdeaed92acedc02d01d7d6b1684882fa3428b41614dcd244f74406d7acb101", "c475f8d21abf7f912370d8f4dc7c5236f6235ab68eabd4138d55a0a6d6930a40"},
    {"powersgd_rounds/r1/ef/n=257", "342164523f199a7b486e7b738a25f0c0c149715a36a85c6ee850eb7cacdfac85", "b4c3fe772b84f65f25ce06795b0eb49e781b7ff5716d981d05e40e9fd5714367"},
    {"powersgd_rounds/r1/ef/n=65536", "f87c679dc02b8fb8558199ee9f0d65b423e44c6dab54c217ecc5d98d2fb9b678", "0b6895ef8ba16edc282593fe92c58b5e874d0ffb515770d605d1c71b704d3cc5"},
    {"powersgd_rounds/r1/no_ef/n=0", "867cecf2c09f4585c1b38646cc6383d6d8db1e0a2cdf1617f20a73f83bd4adea", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
    {"powersgd_rounds/r1/no_ef/n=1", "c2c08473b8185ea8b1574de07c43a29cc940f6d14b283950c7128de1803e2d86", "6b7216e38feee1bd4b55515b3dc44e99e94c42208026f927ec65d925dd1d52e5"},
    {"powersgd_rounds/r1/no_ef/n=255", "7c4ce0ed67b23b7567eed8cb22c4c927badcf0c09708daebf000e6d9f863fc6a", "2ce6274c5d50866dc20543fe4c6dbd4ca235e68a8bbe138418f3724567c4da56"},
    {"powersgd_rounds/r1/no_ef/n=256", "0219dce089344b39ea57ea00d70b0881e5be45ba47d4e230a4323fc3b0989e2d", "373e7a38d2c932c6212f4bbe052933ce7bb6fd635253bacf08dd990723f3f59e"},
    {"powersgd_rounds/r1/no_ef/n=257", "97a35d833f90d09532fa3813bb28306f30236a0a0c1719e09715d760451c429f", "600ccdaea1699b97d0f4d71080383b2f5453da216dd0074c3533ad8f47e0e1bb"},
    {"powersgd_rounds/r1/no_ef/n=65536", "f73d150c28211af3a390177f66ab4d6de257525701f10c84180da8e8adc08db4", "d52f1de45ca26c3996d53ce9fe3cb26c6e147fd5a8566adefa4f262010971d92"},
    {"powersgd_rounds/r2/ef/n=0", "5189b6f176272c0936b7c77a4c903976288ee0d59c2f4643111296cd010ebd34", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
    {"powersgd_rounds/r2/ef/n=1", "7a3b8c5cebf765815bcf2bc5c927136181a7ce12a85880e430515a8c91a5eb86", "f94771929ab6df74a65837ca57ded936339a1e788beabf60ee7bf701744b0dd9"},
    {"powersgd_rounds/r2/ef/n=255", "3142d5a5ca637ebcf268c7178a58013ed49930980c0606d96a1a376d880d522f", "d2c0b67b356304e905e9f334ed363a880bcafac7f14dbc70d09ad17579802836"},
    {"powersgd_rounds/r2/ef/n=256", "de49c141c135c2cbca90e39291ddb9fc70dd6ea51b1868be6a37bb148eb0231d", "c7b6241abed4f8fdb2cc164fad00559adbd7ab62d16574f92d5e7c2d1134ac17"},
    {"powersgd_rounds/r2/ef/n=257", "404e66789342000944d26b2a43919f199a2f8095abdee27a18cb04b3fcf7cad3", "cb3c1e2ba8b38055ec1880a09805f95571045b35a4385191fe4bf88ec3339bc5"},
    {"powersgd_rounds/r2/ef/n=65536", "2417d70f16582e2af4d0ba98c135b225a0d213e6756fdbcf7986bc77e32b2495", "9093f79d72291d98efce3aa316b7dbe20e1bf359717749244e07307cd5f684f8"},
    {"powersgd_rounds/r2/no_ef/n=0", "b856611ff99a4b9577ccf42ea4e7e579dda088cab264d5d27e67ae4f673e62b4", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
    {"powersgd_rounds/r2/no_ef/n=1", "4b95b38762746978d0095df132aaebc489c126795dec35f898170711cf0e441a", "7b263733fbc5a135b3d0f0a3cd29763271f686341690db522290aac7007c4f0a"},
    {"powersgd_rounds/r2/no_ef/n=255", "55a56e4d0b87ec37d980007f680c46789eb1651e082192cbee007fc4ec9830ff", "2bb83a1ed814d2fd58ce6b0db7ee70979f3a77f94238924baf5e56a08f2924db"},
    {"powersgd_rounds/r2/no_ef/n=256", "93ebc29f64d9fe7a25c93cfd9fe57b5020c3f520eb04a1654ae60a994dd661db", "09f45b1fa48772f57870d7d51c66dfc118f0876668cd5bf061893923ddbb8051"},
    {"powersgd_rounds/r2/no_ef/n=257", "f64c954df8fc8088b5a6326be808bb38d5e58f64661d477913f64a5e646b2b2a", "4fc52179fe9b6ebe32c9cee7586064920415b53cfe037511fadd75714dd92f17"},
    {"powersgd_rounds/r2/no_ef/n=65536", "7c82ba43bee28e38572834b6cde9aa7c4c61bdc5c486afeff57082ec2110ae24", "728878bcf6c4f416465eff15064a82dfd0fad2a60ebfe6a4b7a0dc4f4e84d668"},
    {"powersgd_rounds/r4/ef/n=0", "25c1da5de7e91eb89755c82806cd86f2c3aa69654ee3db5e9e67279a20b7dd74", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
    {"powersgd_rounds/r4/ef/n=1", "3c7c9f1ce2ea57d99404ae8d5a5a5dfecd717b6c2e9c5e68a69e6be0bb6c2ee2", "83d777d2a034d3b9a43140eeacb781bbe0412c48a49cb19ff67fc2c320d7a547"},
    {"powersgd_rounds/r4/ef/n=255", "9cde0037fd8f32fd9782f4ee21d2be74bc609fe5f5e433fe6b96b57e15d45922", "4260ab07c3fa1fe73f4fc880f954e98ad305b415714147f78c09eb13e9fe0cdf"},
    {"powersgd_rounds/r4/ef/n=256", "24f5d106fefca55b2c220c1562204cf42e839c5bd04b6e2c5f98e8ec54ff0893", "6018207b9de20ef44755d4d7ec2d61eb584d3257b0f0dcfe92da81371d753499"},
    {"powersgd_rounds/r4/ef/n=257", "54639bd697a3f769658011da52540dbf6165893a52c8fd90f3312dfaedbf3e83", "3fa4794f2270c2e33fffc23bc336c0bbe5777d5bb9389322c310ee2486b2c888"},
    {"powersgd_rounds/r4/ef/n=1048576", "1114c5ccc408f36a8c1bf6f557f8ceaf3b3e31854f91c051cf51c194e084ba8d", "18b41d1887dcb5f0d79591e3b001671c6d7afd7ba9571f1d406d7cd4e8c6d6ca"},
    {"powersgd_rounds/r4/no_ef/n=0", "c55dd11e7248cdb459d723fbb614ad807ab309368b15754c68e78885d0a270b3", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
    {"powersgd_rounds/r4/no_ef/n=1", "8955b98c3aa5a69aaccdeda8e26e2cb14494df8695304d1be24c067a818ba2d6", "099b4720896b337d20afe7d54e1a28448a7e763f8e7c0be94c34955a925cd7cc"},
    {"powersgd_rounds/r4/no_ef/n=255", "bdc3e10878705eb1e1743ff3e602f1a8b979de24c0013a945e6788e40b3917e3", "0f8a9d6f26c38a427e821e2a778551dae36405eb36825d338aa2226b9ab1da6a"},
    {"powersgd_rounds/r4/no_ef/n=256", "b03faf1f9abc594e047de7ac0b879b049938ffd40412806e5d648977d1b54eb5", "a361dd884a859416bb645f2e2887a8c40b726151bb1b67bf83a7b8e52da1ad3c"},
    {"powersgd_rounds/r4/no_ef/n=257", "0a45df06f0e10674634774465aebf927925792f9f611f9ad68e44ff961e78b26", "d1c153d6798b11604cc329a9bab36d591717700a47768a7c83f53506d558a87b"},
    {"powersgd_rounds/r4/no_ef/n=65536", "2f50b3a4a1badf19086248143735aea51b33472fde85eeac4bd5185688ca65e4", "4e03aea4132aa1b765cd9caa4821fd71be7d9ce8481a65cf8351314f6986ad81"},
};
// clang-format on

std::vector<std::size_t> sizes(std::uint32_t rank, bool ef) {
  return {0, 1, 255, 256, 257, rank == 4 && ef ? std::size_t{1} << 20 : std::size_t{1} << 16};
}

std::string case_name(const char* api, std::uint32_t rank, bool ef, std::size_t n) {
  return std::string(api) + "/r" + std::to_string(rank) + (ef ? "/ef" : "/no_ef") +
         "/n=" + std::to_string(n);
}

// The round API as one worker (the sums over workers are the identity).
gt::golden_result run_rounds(std::string name, gc::powersgd_codec& c, std::size_t n,
                             std::uint32_t steps) {
  gt::golden_digests d;
  const std::uint64_t seed = gt::golden_seed(name);
  std::vector<float> p(c.p_floats(n)), q(c.q_floats(n)), out(n);
  for (std::uint32_t step = 0; step < steps; ++step) {
    const std::vector<float> in = gt::golden_input(seed + step, n);
    c.compute_p(in, p);
    c.compute_q(in, p, q);
    d.add_payload(std::as_bytes(std::span<const float>(p)));
    d.add_payload(std::as_bytes(std::span<const float>(q)));
    c.decompress(in, p, q, out);
    d.add_floats(out);
  }
  std::vector<std::byte> state(c.state_bytes());
  state.resize(c.save_state(state));
  d.add_payload(state);
  return d.finish(std::move(name));
}

TEST(golden_payloads_powersgd, encode) {
  std::vector<gt::golden_result> got;
  for (std::uint32_t rank : {1u, 2u, 4u}) {
    for (bool ef : {true, false}) {
      for (std::size_t n : sizes(rank, ef)) {
        gc::powersgd_codec c({.rank = rank, .error_feedback = ef, .seed = 7});
        got.push_back(gt::run_golden(case_name("powersgd", rank, ef, n), c, n, 2));
      }
    }
  }
  gc::powersgd_codec shaped({.rank = 2, .rows = 128, .cols = 512, .seed = 7});
  got.push_back(gt::run_golden("powersgd/r2/ef/128x512/n=65536", shaped, 65536, 2));
  gt::expect_golden(golden_table, "powersgd/", got);
}

TEST(golden_payloads_powersgd, rounds) {
  std::vector<gt::golden_result> got;
  for (std::uint32_t rank : {1u, 2u, 4u}) {
    for (bool ef : {true, false}) {
      for (std::size_t n : sizes(rank, ef)) {
        gc::powersgd_codec c({.rank = rank, .error_feedback = ef, .seed = 7});
        got.push_back(run_rounds(case_name("powersgd_rounds", rank, ef, n), c, n, 2));
      }
    }
  }
  gt::expect_golden(golden_table, "powersgd_rounds/", got);
}

}  // namespace
